"""The vector-store engines on their own (no SQL): FAISS index types and Milvus Lite index
types against a brute-force reference after mixed adds, upserts and removals; padding; HNSW
removals as tombstones; ``auto`` sizes; the compact id set."""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest
from svc_helpers import unit_vectors

from service.errors import InvalidInput
from service.gallery.engines.faiss import FaissStore
from service.gallery.engines.faiss_build import (
    AUTO_IVF_FROM,
    AUTO_IVFSQ_FROM,
    IndexParams,
    ideal_nlist,
    resolve_index_type,
)
from service.gallery.engines.idset import IdSet

DIM = 16
FAISS_TYPES = ["flat", "ivf", "ivfsq", "ivfpq", "hnsw"]
MILVUS_TYPES = ["FLAT", "IVF_FLAT", "HNSW"]


def brute_force(gallery: dict[int, np.ndarray], query: np.ndarray, k: int) -> list[int]:
    ids = np.array(sorted(gallery))
    scores = np.stack([gallery[i] for i in ids]) @ query
    return ids[np.argsort(-scores, kind="stable")[:k]].tolist()


def make_store(kind: str, milvus_lite_uri: str | None = None):  # type: ignore[no-untyped-def]
    """``faiss:<type>`` or ``milvus:<TYPE>`` (a fresh collection on the session's Milvus Lite)."""
    engine, index_type = kind.split(":")
    if engine == "faiss":
        return FaissStore(dim=DIM, index_type=index_type, params=IndexParams(ivf_nprobe=64))
    from service.gallery.engines.milvus import MilvusParams, MilvusStore, milvus_client

    assert milvus_lite_uri is not None
    params = MilvusParams(index_type=index_type, nlist=8, nprobe=8, consistency_level="Strong")
    return MilvusStore(
        client=milvus_client(milvus_lite_uri),
        dim=DIM,
        space=f"test {uuid.uuid4().hex[:8]}",
        params=params,
    )


STORE_KINDS = [f"faiss:{t}" for t in FAISS_TYPES] + [f"milvus:{t}" for t in MILVUS_TYPES]


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    uri = request.getfixturevalue("milvus_lite_uri") if request.param.startswith("m") else None
    made = make_store(request.param, uri)
    yield made
    if hasattr(made, "drop"):
        made.drop()
    made.close()


def test_mixed_adds_and_removals_stay_consistent(store) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    vectors = unit_vectors(600, DIM, seed=2)
    reference: dict[int, np.ndarray] = {}
    next_id = 100
    for step in range(6):
        n_add = int(rng.integers(40, 90))
        ids = np.arange(next_id, next_id + n_add)
        next_id += n_add
        store.add(ids=ids, vectors=vectors[ids % 600])
        reference.update({int(i): vectors[i % 600] for i in ids})
        if step % 3 == 2:  # upsert: the same id with another vector replaces it
            store.add(ids=[int(ids[0])], vectors=vectors[(ids[0] + 7) % 600], replace=True)
            reference[int(ids[0])] = vectors[(ids[0] + 7) % 600]
            store.add(ids=[int(ids[1])], vectors=vectors[0])  # held already: kept as it is
        gone = rng.choice(sorted(reference), size=min(15, len(reference)), replace=False)
        assert store.remove(ids=gone.tolist()) == len(gone)
        for i in gone:
            reference.pop(int(i))
        assert store.remove(ids=[10**9]) == 0  # unknown ids are ignored
        assert store.ntotal == len(reference)
        assert store.ids() == set(reference)
    present = np.array([min(reference), int(gone[0]), 10**9])
    assert store.contains_many(present).tolist() == [True, False, False]
    if store.index_type in ("flat", "FLAT"):  # exact search: the brute-force neighbours
        for q in unit_vectors(5, DIM, seed=9):
            assert store.search(q, k=5)[0].ids.tolist() == brute_force(reference, q, 5)
    for face_id in list(reference)[:5]:  # every index returns a stored vector as its own top-1
        assert store.search(reference[face_id], k=1)[0].ids.tolist() == [face_id]
    if not getattr(store, "exact_vectors", True):
        with pytest.raises(InvalidInput, match="SQL"):
            store.search(unit_vectors(1, DIM), k=3, with_vectors=True)
        return
    some = sorted(reference)[::7]
    np.testing.assert_allclose(
        store.reconstruct_many(some), np.stack([reference[i] for i in some]), atol=1e-6
    )
    for hits in store.search(unit_vectors(3, DIM, seed=4), k=20, with_vectors=True):
        assert hits.vectors is not None and hits.vectors.shape == (len(hits.ids), DIM)
        expected = np.stack([reference[int(i)] for i in hits.ids])
        np.testing.assert_allclose(hits.vectors, expected, atol=1e-6)
    with pytest.raises(KeyError):
        store.reconstruct_many([some[0], int(gone[0])])


@pytest.mark.parametrize("kind", ["faiss:flat", "milvus:FLAT"])
def test_search_filters_padding_when_k_exceeds_ntotal(kind: str, request) -> None:  # type: ignore[no-untyped-def]
    uri = request.getfixturevalue("milvus_lite_uri") if kind.startswith("m") else None
    store = make_store(kind, uri)
    assert store.search(unit_vectors(2, DIM), k=3)[0].ids.size == 0  # empty gallery
    store.add(ids=[5, 6], vectors=unit_vectors(2, DIM))
    hits = store.search(unit_vectors(1, DIM, seed=3), k=10)[0]
    assert sorted(hits.ids.tolist()) == [5, 6] and np.isfinite(hits.scores).all()
    assert hits.scores[0] >= hits.scores[1]


def test_hnsw_removal_is_a_tombstone_not_a_rebuild() -> None:
    store = FaissStore(dim=DIM, index_type="hnsw")
    vectors = unit_vectors(400, DIM, seed=5)
    store.add(ids=np.arange(400), vectors=vectors)
    graph = store._index
    assert store.remove(ids=list(range(0, 30))) == 30
    assert store._index is graph and graph.ntotal == 400  # the graph kept its nodes
    assert store.ntotal == 370 and not store.outgrown()
    for q in vectors[:30]:  # a removed vector is never returned, not even as its own match
        assert not set(store.search(q, k=10)[0].ids.tolist()) & set(range(30))
    store.add(ids=[3], vectors=vectors[3])  # an id can come back (the graph is rebuilt)
    assert store.search(vectors[3], k=1)[0].ids.tolist() == [3] and store.ntotal == 371
    assert store._index.ntotal == 371 and not store._deleted
    graph = store._index
    store.remove(ids=list(range(30, 80)))
    assert (
        store._index is graph and "tombstones" in store.outgrown()
    )  # past 10%: the poller rebuilds the graph


def test_auto_picks_by_size_and_ivf_asks_to_retrain_when_outgrown() -> None:
    assert resolve_index_type("auto", rows=10) == "flat"
    assert resolve_index_type("auto", rows=AUTO_IVF_FROM) == "ivf"
    assert resolve_index_type("auto", rows=AUTO_IVFSQ_FROM) == "ivfsq"
    assert resolve_index_type("hnsw", rows=10**8) == "hnsw"
    params = IndexParams()
    assert ideal_nlist(1_000_000, params) == 4096 and ideal_nlist(100, params) == 2
    small = FaissStore(dim=DIM, index_type="ivf", params=params)
    small.add(ids=np.arange(400), vectors=unit_vectors(400, DIM))
    assert small._index.nlist == ideal_nlist(400, params) and not small.outgrown()
    small.add(ids=np.arange(400, 6400), vectors=unit_vectors(6000, DIM, seed=1))
    assert "retrain" in small.outgrown()
    auto = FaissStore(dim=DIM, index_type="auto")
    auto.add(ids=np.arange(100), vectors=unit_vectors(100, DIM))
    assert auto.index_type == "flat" and not auto.outgrown()


def test_id_set_matches_a_python_set() -> None:
    rng = np.random.default_rng(3)
    ids, reference, next_id = IdSet(), set(), 0
    for _ in range(200):
        n = int(rng.integers(1, 400))
        fresh = np.arange(next_id, next_id + n)
        next_id += n
        ids.add(fresh)
        reference.update(fresh.tolist())
        if reference:
            gone = rng.choice(sorted(reference), size=int(rng.integers(0, 300)), replace=False)
            gone = gone[: len(reference)]
            ids.discard(gone)
            reference.difference_update(gone.tolist())
        back = [i for i in range(0, next_id, 97) if i not in reference][:3]
        ids.add(np.asarray(back, np.int64))
        reference.update(back)
        assert len(ids) == len(reference)
    probe = np.arange(next_id + 5)
    assert ids.contains_many(probe).tolist() == [int(i) in reference for i in probe]
    assert ids.to_array().tolist() == sorted(reference)


def test_concurrent_searches_and_writes() -> None:
    store = FaissStore(dim=DIM)
    store.add(ids=np.arange(1000), vectors=unit_vectors(1000, DIM))
    errors: list[BaseException] = []
    queries = unit_vectors(8, DIM, seed=4)

    def searcher() -> None:
        try:
            for _ in range(40):
                for hits in store.search(queries, k=5):
                    assert hits.ids.size == 5 and (hits.ids >= 0).all()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for step in range(40):
        store.add(ids=[5000 + step], vectors=unit_vectors(1, DIM, seed=step))
        store.remove(ids=[step])
    for t in threads:
        t.join()
    assert not errors and store.ntotal == 1000
