"""The gallery with SQL, on both engines (FAISS, Milvus Lite) and both databases: stores agree
with SQL after mixed writes; the change log repairs a crash between SQL commit and store write;
files are rebuilt; another process's writes arrive by tailing the log; O(1) counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from svc_helpers import unit_vectors

from service.errors import ContractError
from service.gallery import store as store_module
from service.gallery.engines.faiss import FaissStore, sidecar_path
from service.gallery.engines.faiss_build import ids_checksum
from service.gallery.opening import open_gallery, rebuild_gallery
from service.gallery.store import check_consistency, gallery_stats
from service.identities import add_face, create_identity, delete_face, delete_identity

DIM = 16


def _enrol(env, index, n_people: int, per_person: int, *, seed: int = 0) -> list[tuple[int, int]]:
    """Enrol people; returns (identity id, face id) per face, in order."""
    vectors = unit_vectors(n_people * per_person, DIM, seed=seed)
    face_ids = []
    with env.session() as session:
        for p in range(n_people):
            person = create_identity(
                session=session, name=f"person {p}", external_id=f"e{seed}-{p}"
            )
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


def test_sql_and_store_agree_after_mixed_writes_and_rebuild(env, engine) -> None:
    env.with_settings(**engine)
    sync, report = open_gallery(session_factory=env.session_factory, settings=env.settings)
    assert report.rebuilt and sync.primary.ntotal == 0
    assert sync.primary.engine == engine["vector_store"]
    faces = _enrol(env, sync.primary, 6, 3)
    with env.session() as session:
        index = sync.primary
        delete_face(session=session, index=index, identity_id=faces[0][0], face_id=faces[0][1])
        assert delete_identity(session=session, index=index, identity_id=faces[3][0]) == 3
        check = check_consistency(session=session, index=index)
        assert check.consistent and check.sql_count == 14 == index.ntotal
        stats = gallery_stats(session=session, index=index, settings=env.settings)
    assert (stats.identities, stats.faces, stats.dim, stats.index_ntotal) == (5, 14, DIM, 14)
    assert stats.by_source == {"legacy": 14, "mapped": 0}
    sync.refresh()  # the log entries of this process's own writes find nothing left to do
    assert sync.primary.ids() == {f for _, f in faces} - {faces[0][1]} - {
        f for i, f in faces if i == faces[3][0]
    }
    ids = sync.primary.ids()
    sync.close()
    after = rebuild_gallery(session_factory=env.session_factory, settings=env.settings)
    assert after.consistent and after.sql_count == 14
    rebuilt, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    assert rebuilt.primary.ids() == ids
    stored = rebuilt.primary.reconstruct_many([faces[-1][1]])[0]
    assert np.linalg.norm(stored) == pytest.approx(1.0, abs=1e-6)  # normalised once, stored
    rebuilt.close()


def test_crash_between_sql_commit_and_store_write_is_repaired_from_the_log(env, engine) -> None:
    env.with_settings(**engine)
    sync, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    faces = _enrol(env, sync.primary, 3, 2)
    assert sync.refresh() == 6  # the log entries of its own writes (already in the store)
    sync.save()
    position = sync.feed.high
    sync.close()
    # "Crash": a face committed to SQL (with its log entry) but never written to the store...
    with env.session() as session:
        lost = add_face(
            session=session,
            index=None,
            identity_id=faces[0][0],
            vector=unit_vectors(1, DIM, seed=42)[0],
            source="mapped",
            transformer_version="t-abc",
        )
        # ...and a deletion committed whose store removal never happened.
        gone_identity, gone_face = faces[-1]
        delete_face(session=session, index=None, identity_id=gone_identity, face_id=gone_face)
    restarted, report = open_gallery(session_factory=env.session_factory, settings=env.settings)
    assert report.method == "counts" and not report.rebuilt  # tailed from the saved position
    assert restarted.feed.high == position + 2
    assert lost.id in restarted.primary and gone_face not in restarted.primary
    assert restarted.check().consistent
    restarted.close()


def test_missing_corrupt_or_retyped_index_file_is_rebuilt_from_sql(sqlite_env) -> None:
    env = sqlite_env
    sync, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    ids = {face for _, face in _enrol(env, sync.primary, 2, 2)}
    sync.refresh()
    sync.save()
    meta = json.loads(sidecar_path(env.settings.index_file).read_text())
    assert meta["count"] == 4 and meta["ids_sha256"] == ids_checksum(ids)
    assert meta["sync"]["watermark"] == 4 and meta["space"] == "default"
    assert not [p for p in env.settings.index_file.parent.iterdir() if p.name.endswith(".tmp")]
    env.settings.index_file.write_bytes(b"garbage")
    rebuilt, report = open_gallery(session_factory=env.session_factory, settings=env.settings)
    assert report.rebuilt and rebuilt.primary.ids() == ids
    env.with_settings(index_type="hnsw")  # another configured type: rebuilt, not misread
    other, report = open_gallery(session_factory=env.session_factory, settings=env.settings)
    assert report.rebuilt and other.primary.index_type == "hnsw" and other.primary.ids() == ids


def test_index_that_disagrees_with_its_sidecar_is_refused(tmp_path) -> None:
    a = FaissStore(dim=DIM)
    a.add(ids=[1, 2, 3], vectors=unit_vectors(3, DIM))
    path = a.save(tmp_path / "g.faiss")
    side = sidecar_path(path).read_text()
    a.add(ids=[4], vectors=unit_vectors(1, DIM, seed=5))
    a.save(path)
    sidecar_path(path).write_text(side)  # as if the process died between the two renames
    with pytest.raises(ContractError, match="sidecar"):
        FaissStore.load(path)


def test_another_process_writes_arrive_by_tailing_the_log_not_by_comparing_ids(
    env, monkeypatch
) -> None:
    worker_a, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    worker_b, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    _enrol(env, worker_a.primary, 30, 2, seed=1)  # a gallery B already holds
    assert worker_b.refresh() == 60
    monkeypatch.setattr(
        store_module, "sql_face_ids", lambda *_: pytest.fail("a tail must not read every id")
    )
    ids = [face for _, face in _enrol(env, worker_a.primary, 2, 2, seed=2)]  # A writes only
    assert not set(ids) & worker_b.primary.ids()
    assert worker_b.refresh() == 4  # exactly the 4 new entries, not the 64-face gallery
    assert set(ids) <= worker_b.primary.ids() and worker_b.primary.ntotal == 64
    assert worker_b.refresh() == 0  # nothing changed since: one cheap read


def test_an_outgrown_ivf_index_is_retrained_off_to_the_side_and_swapped_in(sqlite_env, tmp_path):
    from service.gallery.importer import import_gallery

    env = sqlite_env
    env.with_settings(index_type="ivf")

    def load(n: int, seed: int) -> None:
        path = tmp_path / f"g{seed}.npz"
        names = np.array([f"s{seed}-{i}" for i in range(n)])
        np.savez(path, old=unit_vectors(n, DIM, seed=seed), external_id=names)
        import_gallery(session_factory=env.session_factory, source=path, settings=env.settings)

    load(400, 1)
    sync, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    first = sync.primary
    assert first.index_type == "ivf" and first._index.nlist == 400 // 39
    load(6000, 2)
    sync.refresh()
    assert first.ntotal == 6400 and "retrain" in first.outgrown()
    reason = sync.rebuild_if_outgrown()
    assert "retrain" in reason and sync.primary is not first
    assert sync.primary._index.nlist > 4 * first._index.nlist and not sync.primary.outgrown()
    assert sync.primary.ids() == first.ids() and sync.check().consistent
    assert sync.rebuild_if_outgrown() == ""
