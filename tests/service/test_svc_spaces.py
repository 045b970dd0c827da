"""Several embedding spaces in one gallery: every face row names its space, one vector store per
space (FAISS and Milvus Lite), rebuildable from SQL per space, carried by the change log; and
the 0004 -> 0005 upgrade of a populated database (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from svc_helpers import OLD_MODEL, unit_vectors

from service.db.models import Face, FaceChange
from service.db.session import upgrade_database
from service.gallery.opening import open_gallery, rebuild_gallery
from service.identities import add_faces, create_identity, delete_face, delete_identity

OLD_DIM, NEW_DIM = 8, 6
NATIVE = "mobilefacenet-test"


def _populate(env, *, n: int = 4):  # type: ignore[no-untyped-def]
    """n identities: one legacy face each; the first two also two native faces."""
    env.with_settings(gallery_model_id=OLD_MODEL)
    old, new = unit_vectors(n, OLD_DIM, seed=1), unit_vectors(2 * n, NEW_DIM, seed=2)
    ids = []
    with env.session() as session:
        for i in range(n):
            person = create_identity(session=session, name=f"p{i}")
            ids.append(person.id)
            add_faces(
                session=session,
                index=None,
                identity_id=person.id,
                vectors=old[i : i + 1],
                source="legacy",
                settings=env.settings,
            )
            if i < 2:
                add_faces(
                    session=session,
                    index=None,
                    identity_id=person.id,
                    vectors=new[2 * i : 2 * i + 2],
                    source="native",
                    space=NATIVE,
                    settings=env.settings,
                )
    return ids, old, new


def _space_ids(env, space):  # type: ignore[no-untyped-def]
    with env.session() as session:
        return set(session.scalars(sa.select(Face.id).where(Face.space == space)).all())


def test_each_space_has_its_own_store_and_the_log_carries_the_space(env, engine) -> None:
    env.with_settings(**engine)
    ids, _old, new = _populate(env)
    sync, report = open_gallery(session_factory=env.session_factory, settings=env.settings)
    try:
        assert report.rebuilt
        assert set(sync.stores) == {OLD_MODEL, NATIVE}
        assert sync.primary.ids() == _space_ids(env, OLD_MODEL) and sync.primary.ntotal == 4
        native = sync.store(NATIVE)
        assert native is not None and native.ids() == _space_ids(env, NATIVE)
        assert native.dim == NEW_DIM and sync.primary.dim == OLD_DIM
        # a native query finds its native faces, the old space is searched with old vectors
        (hit,) = native.search(new[:1], k=1)
        assert int(hit.ids[0]) == min(_space_ids(env, NATIVE))
        with env.session() as session:
            spaces = dict(session.execute(sa.select(FaceChange.face_id, FaceChange.space)).all())
        assert {spaces[i] for i in _space_ids(env, NATIVE)} == {NATIVE}
        assert {spaces[i] for i in _space_ids(env, OLD_MODEL)} == {OLD_MODEL}
        # a replica learns of a native face through the log, and of its removal
        with env.session() as session:
            (face,) = add_faces(
                session=session,
                index=None,
                identity_id=ids[3],
                vectors=unit_vectors(1, NEW_DIM, seed=9),
                source="captured",
                space=NATIVE,
                settings=env.settings,
            )
        assert sync.refresh() >= 1 and face.id in native.ids() and face.space == NATIVE
        assert face.id not in sync.primary.ids()
        with env.session() as session:
            delete_face(session=session, index=None, identity_id=ids[3], face_id=face.id)
            delete_identity(session=session, index=None, identity_id=ids[0])
        sync.refresh()
        assert native.ids() == _space_ids(env, NATIVE) and len(native.ids()) == 2
        assert sync.primary.ids() == _space_ids(env, OLD_MODEL)
        assert sync.check().consistent
    finally:
        sync.save()
        sync.close()
    # reopened from the saved files (FAISS) / collections (Milvus): both spaces, no rebuild
    again, report = open_gallery(session_factory=env.session_factory, settings=env.settings)
    try:
        assert not report.rebuilt and set(again.stores) == {OLD_MODEL, NATIVE}
        assert again.store(NATIVE).ids() == _space_ids(env, NATIVE)  # type: ignore[union-attr]
    finally:
        again.close()


def test_every_space_rebuilds_from_sql(sqlite_env) -> None:
    env = sqlite_env
    _populate(env)
    sync, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    sync.save()
    sync.close()
    native_file = env.settings.index_file.with_name(
        f"{env.settings.index_file.stem}.mobilefacenet_test{env.settings.index_file.suffix}"
    )
    assert native_file.exists()
    native_file.write_bytes(b"corrupt")
    after = rebuild_gallery(session_factory=env.session_factory, settings=env.settings)
    assert after.consistent
    sync, _report = open_gallery(session_factory=env.session_factory, settings=env.settings)
    try:
        assert sync.store(NATIVE).ids() == _space_ids(env, NATIVE)  # type: ignore[union-attr]
    finally:
        sync.close()


def test_a_native_face_of_another_dimension_is_refused(sqlite_env) -> None:
    env = sqlite_env
    ids, _, _ = _populate(env)
    with env.session() as session, pytest.raises(Exception, match="dimension"):
        add_faces(
            session=session,
            index=None,
            identity_id=ids[2],
            vectors=unit_vectors(1, NEW_DIM + 1, seed=3),
            source="native",
            space=NATIVE,
            settings=env.settings,
        )


def _upgrade_populated(url: str) -> None:
    upgrade_database(url=url, revision="0004")
    engine = sa.create_engine(url)
    face = (
        "INSERT INTO faces (identity_id, vector, dim, content_hash, source, created_at) "
        "VALUES (:i, :v, 2, :h, 'legacy', '2026-01-01')"
    )
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE registry_state SET gallery_model_id = 'dlib-v1'"))
            conn.execute(
                sa.text(
                    "INSERT INTO identities (external_id, metadata, created_at, updated_at) "
                    "VALUES ('a', '{}', '2026-01-01', '2026-01-01')"
                )
            )
            identity = conn.execute(sa.text("SELECT id FROM identities")).scalar()
            vector = np.asarray([0.6, 0.8], "<f4").tobytes()
            for h in ("h1", "h2"):
                conn.execute(sa.text(face), {"i": identity, "v": vector, "h": h})
        upgrade_database(url=url)
        with engine.begin() as conn:
            rows = conn.execute(sa.text("SELECT space, source FROM faces ORDER BY id")).all()
            assert [tuple(r) for r in rows] == [("dlib-v1", "legacy")] * 2
            conn.execute(
                sa.text(
                    "INSERT INTO faces (identity_id, vector, dim, content_hash, source, space, "
                    "created_at) VALUES (:i, :v, 2, 'h3', 'captured', 'mfn', '2026-01-02')"
                ),
                {"i": identity, "v": vector},
            )
            with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
                conn.execute(
                    sa.text(face.replace("'legacy'", "'bogus'")), {"i": 1, "v": b"", "h": "x"}
                )
    finally:
        engine.dispose()


def test_upgrade_of_a_populated_sqlite_gallery(tmp_path) -> None:
    _upgrade_populated(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_upgrade_of_a_populated_postgres_gallery(postgres_url) -> None:
    name = f"facebridge_up_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        _upgrade_populated(make_url(postgres_url).set(database=name).render_as_string(False))
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
