"""FAISS gallery: consistency after mixed adds/removals, search vs a brute-force reference,
atomic persistence, rebuild from SQL and repair after a crash between SQL commit and FAISS add."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from svc_helpers import unit_vectors

from service.errors import ContractError
from service.gallery.index import GalleryIndex, ids_checksum, sidecar_path
from service.gallery.store import (
    GallerySync,
    check_consistency,
    gallery_stats,
    open_gallery,
    rebuild_from_sql,
    save_gallery,
)
from service.identities import add_face, create_identity, delete_face, delete_identity

DIM = 16


def brute_force(gallery: dict[int, np.ndarray], query: np.ndarray, k: int) -> list[int]:
    ids = np.array(sorted(gallery))
    scores = np.stack([gallery[i] for i in ids]) @ query
    return ids[np.argsort(-scores, kind="stable")[:k]].tolist()


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_mixed_adds_and_removals_stay_consistent(index_type):
    rng = np.random.default_rng(1)
    vectors = unit_vectors(600, DIM, seed=2)
    index = GalleryIndex(dim=DIM, index_type=index_type)
    reference: dict[int, np.ndarray] = {}
    next_id = 100
    for step in range(12):
        n_add = int(rng.integers(20, 60))
        ids = np.arange(next_id, next_id + n_add)
        next_id += n_add
        index.add(ids=ids, vectors=vectors[ids % 600])
        reference.update({int(i): vectors[i % 600] for i in ids})
        if step % 3 == 2:  # upsert: the same id with another vector replaces it
            index.add(ids=[int(ids[0])], vectors=vectors[(ids[0] + 7) % 600])
            reference[int(ids[0])] = vectors[(ids[0] + 7) % 600]
        gone = rng.choice(sorted(reference), size=min(15, len(reference)), replace=False)
        assert index.remove(ids=gone.tolist()) == len(gone)
        for i in gone:
            reference.pop(int(i))
        assert index.remove(ids=[10**9]) == 0  # unknown ids are ignored
        assert index.ntotal == len(reference)
        assert index.ids() == set(reference)
    if index_type == "flat":  # exact search: the same neighbours as a brute-force reference
        for q in unit_vectors(5, DIM, seed=9):
            assert index.search(q, k=5)[0].ids.tolist() == brute_force(reference, q, 5)
    for face_id in list(reference)[:5]:  # every index returns a stored vector as its own top-1
        assert index.search(reference[face_id], k=1)[0].ids.tolist() == [face_id]
    # What fused re-scoring reads: the stored vectors of given ids / of the search's hits.
    some = sorted(reference)[::7]
    held = index.reconstruct_many(some)
    np.testing.assert_allclose(held, np.stack([reference[i] for i in some]), atol=1e-6)
    for hits in index.search(unit_vectors(3, DIM, seed=4), k=20, with_vectors=True):
        assert hits.vectors is not None and hits.vectors.shape == (len(hits.ids), DIM)
        expected = np.stack([reference[int(i)] for i in hits.ids])
        np.testing.assert_allclose(hits.vectors, expected, atol=1e-6)
    with pytest.raises(KeyError):
        index.reconstruct_many([some[0], int(gone[0])])


def test_search_filters_padding_when_k_exceeds_ntotal():
    index = GalleryIndex(dim=DIM)
    assert index.search(unit_vectors(2, DIM), k=3)[0].ids.size == 0  # empty gallery
    empty = index.search(unit_vectors(2, DIM), k=3, with_vectors=True)[0]
    assert empty.vectors is not None and empty.vectors.shape == (0, DIM)
    index.add(ids=[5, 6], vectors=unit_vectors(2, DIM))
    hits = index.search(unit_vectors(1, DIM, seed=3), k=10)[0]
    assert sorted(hits.ids.tolist()) == [5, 6] and np.isfinite(hits.scores).all()
    assert hits.scores[0] >= hits.scores[1]


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_save_and_load_round_trip(tmp_path, index_type):
    index = GalleryIndex(dim=DIM, index_type=index_type)
    index.add(ids=np.arange(1, 201), vectors=unit_vectors(200, DIM))
    index.remove(ids=[3, 4, 5])
    path = index.save(tmp_path / "g.faiss")
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["count"] == 197 and meta["max_id"] == 200
    assert meta["ids_sha256"] == ids_checksum(index.ids())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    loaded = GalleryIndex.load(path, index_type=index_type)
    assert loaded.ids() == index.ids() and loaded.ntotal == 197
    np.testing.assert_array_equal(
        loaded.reconstruct_many([200, 1, 6]), unit_vectors(200, DIM)[[199, 0, 5]]
    )
    with pytest.raises(ContractError):
        GalleryIndex.load(path, index_type="flat" if index_type != "flat" else "hnsw")


def test_index_that_disagrees_with_its_sidecar_is_refused(tmp_path):
    a = GalleryIndex(dim=DIM)
    a.add(ids=[1, 2, 3], vectors=unit_vectors(3, DIM))
    path = a.save(tmp_path / "g.faiss")
    side = sidecar_path(path).read_text()
    a.add(ids=[4], vectors=unit_vectors(1, DIM, seed=5))
    a.save(path)
    sidecar_path(path).write_text(side)  # as if the process died between the two renames
    with pytest.raises(ContractError, match="sidecar"):
        GalleryIndex.load(path)


def test_concurrent_searches_and_writes():
    index = GalleryIndex(dim=DIM)
    index.add(ids=np.arange(1000), vectors=unit_vectors(1000, DIM))
    errors: list[BaseException] = []
    queries = unit_vectors(8, DIM, seed=4)

    def searcher() -> None:
        try:
            for _ in range(40):
                for hits in index.search(queries, k=5):
                    assert hits.ids.size == 5 and (hits.ids >= 0).all()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for step in range(40):
        index.add(ids=[5000 + step], vectors=unit_vectors(1, DIM, seed=step))
        index.remove(ids=[step])
    for t in threads:
        t.join()
    assert not errors and index.ntotal == 1000


# ---------------------------------------------------------------------------------------------
# With SQL
# ---------------------------------------------------------------------------------------------
def _enrol(env, index, n_people: int, per_person: int, *, seed: int = 0) -> list[tuple[int, int]]:
    """Enrol people; returns (identity id, face id) per face, in order."""
    vectors = unit_vectors(n_people * per_person, DIM, seed=seed)
    face_ids = []
    with env.session() as session:
        for p in range(n_people):
            person = create_identity(session=session, name=f"person {p}", external_id=f"e{p}")
            for j in range(per_person):
                face = add_face(
                    session=session,
                    index=index,
                    identity_id=person.id,
                    vector=vectors[p * per_person + j] * 3.0,  # normalised on entry
                    source="legacy",
                )
                face_ids.append((person.id, face.id))
    return face_ids


def test_sql_and_index_agree_after_mixed_writes_and_rebuild(env):
    index, report = open_gallery(session_factory=env.session_factory, settings=env.settings)
    assert report.rebuilt and index.ntotal == 0
    faces = _enrol(env, index, 6, 3)
    with env.session() as session:
        delete_face(session=session, index=index, identity_id=faces[0][0], face_id=faces[0][1])
        assert delete_identity(session=session, index=index, identity_id=faces[3][0]) == 3
        check = check_consistency(session=session, index=index)
        assert check.consistent and check.sql_count == 14 == index.ntotal
        rebuilt = rebuild_from_sql(session=session, settings=env.settings)
        assert rebuilt.ids() == index.ids()
        stored = rebuilt.reconstruct(faces[-1][1])
        assert np.linalg.norm(stored) == pytest.approx(1.0, abs=1e-6)  # normalised once, stored
        stats = gallery_stats(session=session, index=index, settings=env.settings)
    assert (stats.identities, stats.faces, stats.dim, stats.index_ntotal) == (5, 14, DIM, 14)
    assert stats.by_source == {"legacy": 14, "mapped": 0}


def test_crash_between_sql_commit_and_faiss_add_is_repaired_on_open(env):
    index, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    faces = _enrol(env, index, 3, 2)
    save_gallery(index=index, settings=env.settings)
    # "Crash": faces committed to SQL but never added to the (persisted) index...
    with env.session() as session:
        lost = add_face(
            session=session,
            index=None,
            identity_id=faces[0][0],
            vector=unit_vectors(1, DIM, seed=42)[0],
            source="mapped",
            transformer_version="t-abc",
        )
        # ...and a deletion committed whose FAISS removal never happened.
        gone_identity, gone_face = faces[-1]
        delete_face(session=session, index=None, identity_id=gone_identity, face_id=gone_face)
    restarted, report = open_gallery(session_factory=env.session_factory, settings=env.settings)
    assert report.repaired and not report.consistent
    assert (report.missing_in_index, report.extra_in_index) == (1, 1)
    assert lost.id in restarted and gone_face not in restarted
    with env.session() as session:
        assert check_consistency(session=session, index=restarted).consistent
    # The repaired index was persisted: a second start finds nothing to repair.
    _, again = open_gallery(session_factory=env.session_factory, settings=env.settings)
    assert again.consistent and not again.repaired and not again.rebuilt


def test_missing_or_corrupt_index_file_is_rebuilt_from_sql(sqlite_env):
    env = sqlite_env
    index, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    ids = [face for _, face in _enrol(env, index, 2, 2)]
    save_gallery(index=index, settings=env.settings)
    env.settings.index_file.write_bytes(b"garbage")
    rebuilt, report = open_gallery(session_factory=env.session_factory, settings=env.settings)
    assert report.rebuilt and rebuilt.ids() == set(ids)
    env.with_settings(index_type="hnsw")  # another configured type: rebuilt, not misread
    other, report = open_gallery(session_factory=env.session_factory, settings=env.settings)
    assert report.rebuilt and other.index_type == "hnsw" and other.ids() == set(ids)


def test_gallery_sync_follows_writes_from_another_process(sqlite_env):
    env = sqlite_env
    worker_a, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    worker_b, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    sync_b = GallerySync(session_factory=env.session_factory, index=worker_b)
    sync_b.refresh()
    ids = [face for _, face in _enrol(env, worker_a, 2, 2)]  # written by worker A only
    assert worker_b.ntotal == 0
    assert sync_b.refresh() is not None
    assert worker_b.ids() == set(ids)
    assert sync_b.refresh() is None  # nothing changed since: one cheap read
