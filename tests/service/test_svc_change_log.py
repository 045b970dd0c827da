"""The face change log: a seq that commits after a higher one is not skipped (PostgreSQL), a
rolled-back seq is given up, compaction sends a replica that fell behind to a full resync, and
the sharded counters equal real counts after concurrent writers."""

from __future__ import annotations

import threading

import numpy as np
from sqlalchemy import func, select
from svc_helpers import unit_vectors

from service.db.models import Face, Identity
from service.db.registry_state import compacted_through
from service.gallery.changes import compact_changes, record_face_changes
from service.gallery.counters import read_counts
from service.gallery.opening import open_gallery
from service.gallery.store import content_hash, vector_bytes
from service.identities import add_face, create_identity, delete_identity

DIM = 16


def _uncommitted_face(env, identity_id: int, seed: int):  # type: ignore[no-untyped-def]
    """A face + its log entry written in a transaction left open (a slow writer)."""
    session = env.session()
    blob = vector_bytes(unit_vectors(1, DIM, seed=seed)[0])
    face = Face(
        identity_id=identity_id,
        vector=blob,
        dim=DIM,
        content_hash=content_hash(blob),
        source="legacy",
    )
    session.add(face)
    session.flush()  # the face row first (the transaction gets its id), then the seq
    record_face_changes(session, added=[face.id])
    return session, face


def _enrol_one(env, identity_id: int, seed: int) -> int:  # type: ignore[no-untyped-def]
    with env.session() as session:
        vector = unit_vectors(1, DIM, seed=seed)[0]
        return add_face(
            session=session, index=None, identity_id=identity_id, vector=vector, source="legacy"
        ).id


def test_a_seq_that_commits_late_is_not_skipped_and_a_rolled_back_one_is_given_up(pg_env):
    env = pg_env
    with env.session() as session:
        person = create_identity(session=session, name="p").id
    _enrol_one(env, person, 1)
    replica, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    assert replica.primary.ntotal == 1

    slow, late_face = _uncommitted_face(env, person, 2)  # takes seq 10, say ...
    fast_face = _enrol_one(env, person, 3)  # ... and seq 11 commits first
    replica.refresh()
    assert fast_face in replica.primary and late_face.id not in replica.primary
    assert len(replica.feed.gaps) == 1 and replica.feed.watermark < replica.feed.high
    replica.refresh()  # still in flight: still a gap, still waiting
    assert len(replica.feed.gaps) == 1
    slow.commit()
    slow.close()
    replica.refresh()
    assert late_face.id in replica.primary  # applied, not skipped
    assert not replica.feed.gaps and replica.feed.watermark == replica.feed.high

    doomed, _ = _uncommitted_face(env, person, 4)  # a seq that will never commit
    after = _enrol_one(env, person, 5)
    replica.refresh()
    assert after in replica.primary and len(replica.feed.gaps) == 1
    doomed.rollback()
    doomed.close()
    replica.refresh()  # no transaction can fill it any more: given up
    assert not replica.feed.gaps and replica.feed.watermark == replica.feed.high
    assert replica.check().consistent


def test_compaction_sends_a_replica_that_fell_behind_to_a_full_resync(sqlite_env):
    env = sqlite_env
    behind, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    with env.session() as session:
        person = create_identity(session=session, name="p").id
    faces = [_enrol_one(env, person, seed) for seed in range(30)]
    with env.session() as session:
        assert compact_changes(session, keep=10) == 20
        assert compacted_through(session) == 20
        assert compact_changes(session, keep=10) == 0  # idempotent
    assert behind.feed.watermark == 0 < 20
    behind.refresh()  # cannot tail past compacted entries: full comparison with SQL instead
    assert behind.primary.ids() == set(faces) and behind.feed.watermark == 30
    # Its saved file (position 0) is just as stale: a restart compares ids once, then tails.
    restarted, report = open_gallery(session_factory=env.session_factory, settings=env.settings)
    assert report.repaired and report.missing_in_index == 30
    assert restarted.primary.ids() == set(faces) and restarted.feed.watermark == 30


def test_counters_equal_real_counts_after_concurrent_writers(env):
    with env.session() as session:
        people = [create_identity(session=session, external_id=f"c{i}").id for i in range(4)]
    errors: list[BaseException] = []

    def writer(identity_id: int, seed: int) -> None:
        try:
            for j in range(6):
                _enrol_one(env, identity_id, seed * 100 + j)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p, i)) for i, p in enumerate(people)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with env.session() as session:
        delete_identity(session=session, index=None, identity_id=people[0])
        counts = read_counts(session)
        faces = session.scalar(select(func.count()).select_from(Face))
        identities = session.scalar(select(func.count()).select_from(Identity))
    assert (counts["faces"], counts["faces.legacy"], counts["identities"]) == (18, 18, 3)
    assert (faces, identities) == (18, 3)
    replica, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    assert replica.primary.ntotal == 18 and replica.check().consistent
    assert np.all(replica.primary.contains_many(np.arange(1, 1)))  # empty query: no error
