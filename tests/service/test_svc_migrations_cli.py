"""Alembic migrations produce exactly the models' schema (SQLite and Postgres); the CLI works
on the database directly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from svc_helpers import make_transformer_onnx, unit_vectors

from service.cli import main as cli_main
from service.db.models import Base
from service.db.session import upgrade_database

REPO = Path(__file__).resolve().parents[2]
TABLES = {
    "identities",
    "faces",
    "transformer_versions",
    "registry_state",
    "api_keys",
    "audit_events",
    "shadow_runs",
    "shadow_results",
}


def test_migrated_schema_matches_the_models(env):
    with env.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert context.get_current_revision() == "0005"
        assert set(sa.inspect(conn).get_table_names()) >= TABLES
        generation = conn.execute(sa.text("select generation from registry_state")).scalar()
    assert generation == 0


def test_alembic_cli_reads_the_url_from_settings(tmp_path):
    db = tmp_path / "fresh.db"
    env = {**os.environ, "FACEBRIDGE_DATABASE_URL": f"sqlite:///{db}"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "upgrade", "head"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        assert set(sa.inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()
    upgrade_database(url=f"sqlite:///{db}")  # idempotent: already at head


def test_upgrade_keeps_stored_transformers_one_way(tmp_path):
    """0001 -> 0002 adds transformer_versions.fusion_weight; rows stored before are one-way."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade_database(url=url, revision="0001")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO transformer_versions (version, sha256, file_name, size_bytes, "
                    "input_dim, output_dim, source_model, target_model, recipe, metrics, state, "
                    "created_at) VALUES ('t-1', 'ab', 'ab.onnx', 1, 4, 3, 'n', 'o', 'ridge', "
                    "'{}', 'inactive', '2026-01-01 00:00:00')"
                )
            )
        upgrade_database(url=url)
        with engine.connect() as conn:
            weight = conn.execute(sa.text("select fusion_weight from transformer_versions"))
            assert weight.scalar_one() == 1.0
    finally:
        engine.dispose()


def test_upgrade_to_the_change_log_seeds_counters_and_stops_face_id_reuse(tmp_path):
    """0003 -> 0004: counters start at the real counts; SQLite face ids become AUTOINCREMENT
    (a deleted newest id is never handed out again: the vector stores key on it)."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade_database(url=url, revision="0003")
    engine = sa.create_engine(url)
    face = (
        "INSERT INTO faces (identity_id, vector, dim, content_hash, source, created_at) "
        "VALUES (1, x'00', 1, :h, :s, '2026-01-01')"
    )
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO identities (external_id, metadata, created_at, updated_at) "
                    "VALUES ('a', '{}', '2026-01-01', '2026-01-01')"
                )
            )
            for h, source in (("h1", "legacy"), ("h2", "legacy"), ("h3", "mapped")):
                conn.execute(sa.text(face), {"h": h, "s": source})
        upgrade_database(url=url)
        with engine.begin() as conn:
            counts = dict(conn.execute(sa.text("select name, value from gallery_counters")).all())
            assert counts == {"identities": 1, "faces": 3, "faces.legacy": 2, "faces.mapped": 1}
            conn.execute(sa.text("DELETE FROM faces WHERE id = 3"))
            conn.execute(sa.text(face), {"h": "h4", "s": "legacy"})
            assert conn.execute(sa.text("select max(id) from faces")).scalar() == 4
    finally:
        engine.dispose()


def test_cli_commands_work_on_the_database(tmp_path, monkeypatch, capsys):
    import numpy as np

    monkeypatch.setenv("FACEBRIDGE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("FACEBRIDGE_DATA_DIR", str(tmp_path / "var"))

    def run(*args: str) -> tuple[int, str, str]:
        code = cli_main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    assert run("db", "upgrade")[0] == 0
    code, out, _ = run("keys", "create", "--scope", "admin", "--name", "ops")
    assert code == 0 and out.strip().startswith("fb_")
    np.savez(tmp_path / "g.npz", old=unit_vectors(4, 8), name=np.array(["a", "a", "b", "c"]))
    code, out, _ = run("gallery", "import", str(tmp_path / "g.npz"), "--model-id", "old-model")
    assert code == 0 and '"faces_added": 4' in out
    assert '"faces_added": 0' in run("gallery", "import", str(tmp_path / "g.npz"))[1]
    code, out, _ = run("gallery", "stats")
    assert code == 0 and '"index_consistent": true' in out
    (tmp_path / "t1.onnx").write_bytes(make_transformer_onnx(seed=1))
    (tmp_path / "t2.onnx").write_bytes(make_transformer_onnx(seed=2))
    assert run("transformer", "upload", str(tmp_path / "t1.onnx"), "--activate")[0] == 0
    assert run("transformer", "upload", str(tmp_path / "t2.onnx"), "--activate")[0] == 0
    code, out, _ = run("transformer", "list")
    assert code == 0 and out.count("active") == 2 and out.count("inactive") == 1
    assert "fusion_weight" in out.splitlines()[0]  # one-way vs two-way shows in the listing
    code, alias_out, err = run("transformers", "list")  # the old spelling, for one release
    assert code == 0 and alias_out == out and "deprecated" in err and len(err.splitlines()) == 1
    assert run("transformer", "rollback")[0] == 0
    version = out.splitlines()[1].split()[0]  # the first uploaded, active again after rollback
    code, _, err = run("transformer", "delete", version)
    assert code == 2 and "active" in err  # one line, no traceback
    (tmp_path / "bad.onnx").write_bytes(b"junk")
    code, _, err = run("transformer", "upload", str(tmp_path / "bad.onnx"))
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert run("gallery", "rebuild")[0] == 0
    code, out, _ = run("keys", "list")
    assert code == 0 and "ops" in out and "fb_" in out


@pytest.mark.parametrize("args", [["db", "upgrade", "--help"], ["service", "run", "--help"]])
def test_cli_help(args, capsys):
    assert cli_main(args) == 0
