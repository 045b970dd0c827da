"""Captured vectors in SQL (SQLite and PostgreSQL): provenance, the cap's replacement, undo by
identity / time window / transformer version, export as bridge pairs, and the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from svc_helpers import OLD_MODEL, unit_vectors

from service.cli import main as cli_main
from service.contracts import load_pairs
from service.db.models import Face, FaceCapture
from service.errors import InvalidInput
from service.gallery.opening import open_gallery
from service.identities import add_faces, create_identity
from service.migration.captures import Provenance, store_capture, undo_captures
from service.registry.audit import LOCAL_ACTOR

NATIVE, NEW_DIM, OLD_DIM = "mfn", 6, 8


def _gallery(env, n=3):  # type: ignore[no-untyped-def]
    env.with_settings(gallery_model_id=OLD_MODEL)
    ids = []
    with env.session() as session:
        for i in range(n):
            person = create_identity(session=session, name=f"p{i}")
            add_faces(
                session=session,
                index=None,
                identity_id=person.id,
                vectors=unit_vectors(1, OLD_DIM, seed=i),
                source="legacy",
                settings=env.settings,
            )
            ids.append(person.id)
    return ids


def _capture(env, identity_id, vector, *, version="t-1", max_native=3):  # type: ignore[no-untyped-def]
    with env.session() as session:
        return store_capture(
            session,
            identity_id=identity_id,
            vector=vector,
            space=NATIVE,
            provenance=Provenance(
                request_id="r", score=0.9, margin=2.0, transformer_version=version
            ),
            max_native=max_native,
        )


def test_cap_replaces_the_most_redundant_and_undo_removes_exactly(env) -> None:
    ids = _gallery(env)
    sync, _ = open_gallery(session_factory=env.session_factory, settings=env.settings)
    try:
        eye = np.eye(NEW_DIM, dtype=np.float32)
        close = eye[0] + 0.2 * eye[1]
        base = [eye[0], close / np.linalg.norm(close), eye[2]]
        stored = [_capture(env, ids[0], v).face_id for v in base]
        # full (3): a newcomer unlike the others replaces one of the closest pair (the first)
        result = _capture(env, ids[0], eye[3])
        assert result.stored and result.evicted == stored[0]
        twin = eye[2] + 0.05 * eye[3]  # as redundant as what it resembles: the held one stays
        assert not _capture(env, ids[0], twin / np.linalg.norm(twin)).stored
        assert not _capture(env, ids[0], eye[3]).stored  # already held
        _capture(env, ids[1], unit_vectors(1, NEW_DIM, seed=9)[0], version="t-2")
        sync.refresh()
        with env.session() as session:
            held = session.scalar(sa.select(sa.func.count()).select_from(FaceCapture))
            assert held == 4 and sync.store(NATIVE).ntotal == 4  # type: ignore[union-attr]
            row = session.scalars(sa.select(FaceCapture).order_by(FaceCapture.face_id)).first()
            assert (row.request_id, row.score, row.margin, row.transformer_version) == (
                "r",
                0.9,
                2.0,
                "t-1",
            )
        with env.session() as session, pytest.raises(InvalidInput):
            undo_captures(session, actor=LOCAL_ACTOR)
        with env.session() as session:
            assert len(undo_captures(session, actor=LOCAL_ACTOR, transformer_version="t-2")) == 1
        with env.session() as session:
            removed = undo_captures(session, actor=LOCAL_ACTOR, identity_id=ids[0])
        assert len(removed) == 3
        sync.refresh()
        assert sync.store(NATIVE).ntotal == 0 and sync.check().consistent  # type: ignore[union-attr]
        with env.session() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(FaceCapture)) == 0
            assert session.scalar(sa.select(sa.func.count()).select_from(Face)) == 3
    finally:
        sync.close()


def test_cli_status_export_and_undo_by_window(sqlite_env, monkeypatch, capsys) -> None:
    env = sqlite_env
    ids = _gallery(env)
    monkeypatch.setenv("FACEBRIDGE_DATABASE_URL", env.settings.database_url)
    monkeypatch.setenv("FACEBRIDGE_DATA_DIR", str(env.settings.data_dir))
    monkeypatch.setenv("FACEBRIDGE_GALLERY_MODEL_ID", OLD_MODEL)
    vectors = unit_vectors(2, NEW_DIM, seed=3)
    _capture(env, ids[0], vectors[0])
    _capture(env, ids[2], vectors[1])
    out = env.settings.data_dir / "captures.npz"
    assert cli_main(["migration", "export-pairs", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2
    pairs = load_pairs(out)
    assert list(pairs.label) == [ids[0], ids[2]] and list(pairs.split) == ["bridge", "bridge"]
    np.testing.assert_allclose(pairs.new, vectors, atol=1e-6)
    np.testing.assert_allclose(pairs.old[1], unit_vectors(1, OLD_DIM, seed=2)[0], atol=1e-6)
    assert cli_main(["migration", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["captures_total"] == 2 and status["coverage"] == pytest.approx(2 / 3, abs=1e-3)
    assert status["captures_per_day"][-1]["captures"] == 2
    assert {s["space"] for s in status["spaces"]} == {OLD_MODEL, NATIVE}
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert cli_main(["migration", "undo", "--since", future]) == 0
    assert json.loads(capsys.readouterr().out)["faces_removed"] == 0
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert cli_main(["migration", "undo", "--since", past, "--reason", "bad version"]) == 0
    assert json.loads(capsys.readouterr().out)["faces_removed"] == 2
    assert cli_main(["migration", "undo"]) == 2
    assert cli_main(["migration", "status"]) == 0
    history = json.loads(capsys.readouterr().out)["undo_history"]
    assert [h["faces_removed"] for h in history] == [2, 0] and history[0]["reason"] == "bad version"
