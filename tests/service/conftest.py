"""Fixtures for the storage/domain layer: a migrated database per test (SQLite and Postgres),
settings pointing into ``tmp_path``, and tiny transformer ONNX files built with ``onnx.helper``
(no torch needed).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from svc_helpers import OLD_DIM, OLD_MODEL, unit_vectors, write_backbone_manifest

from service.db.models import Base
from service.db.session import make_engine, make_session_factory, upgrade_database
from service.identities import add_face, create_identity
from service.settings import ServiceSettings


# ---------------------------------------------------------------------------------------------
# Databases
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; each test gets a copy."""
    path = tmp_path_factory.mktemp("db-template") / "template.db"
    upgrade_database(url=f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database(postgres_url: str) -> Iterator[str]:
    """A uniquely named database on the test server, migrated once, dropped at the end."""
    name = f"facebridge_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_database(url=url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def _reset_postgres(url: str) -> None:
    """Empty every table (DELETE is much cheaper than TRUNCATE on tiny tables)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
        conn.execute(
            sa.text(
                "INSERT INTO registry_state (id, generation, changes_compacted_through, "
                "updated_at) VALUES (1, 0, 0, now())"
            )
        )
    engine.dispose()


@dataclass
class Env:
    """What a test needs: settings, engine and sessions on a fresh, migrated database."""

    settings: ServiceSettings
    engine: sa.Engine
    session_factory: sessionmaker[Session]
    backend: str

    def session(self) -> Session:
        return self.session_factory()

    def with_settings(self, **changes: object) -> ServiceSettings:
        self.settings = self.settings.model_copy(update=changes)
        return self.settings


def _make_env(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> Iterator[Env]:
    if backend == "sqlite":
        db = tmp_path / "facebridge.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), db)
        url = f"sqlite:///{db}"
    else:
        url = request.getfixturevalue("postgres_database")
        _reset_postgres(url)
    settings = ServiceSettings(database_url=url, data_dir=tmp_path / "var")
    engine = make_engine(url)
    try:
        yield Env(settings, engine, make_session_factory(engine), backend)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """A fresh database on SQLite and on Postgres (the test runs once per backend)."""
    yield from _make_env(request, tmp_path, request.param)


@pytest.fixture
def configured(env, tmp_path):
    """A registry with a backbone manifest and a gallery of known dim and model id (one
    identity with one legacy face), on SQLite and Postgres."""
    manifest = write_backbone_manifest(tmp_path / "backbone")
    env.with_settings(backbone_manifest=manifest, gallery_model_id=OLD_MODEL)
    with env.session() as session:
        person = create_identity(session=session, name="p")
        add_face(
            session=session,
            index=None,
            identity_id=person.id,
            vector=unit_vectors(1, OLD_DIM)[0],
            source="legacy",
            settings=env.settings,
        )
    return env


@pytest.fixture
def sqlite_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """A fresh SQLite database (tests whose behaviour does not depend on the backend)."""
    yield from _make_env(request, tmp_path, "sqlite")


# ---------------------------------------------------------------------------------------------
# Vector-store engines: FAISS (embedded) and Milvus (Lite, one in-process server per session)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def milvus_lite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One Milvus Lite data dir (and server) for the whole session; tests use own collections."""
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")
    return str(tmp_path_factory.mktemp("milvus") / "milvus.db")


ENGINES = ["faiss", "milvus"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> dict[str, object]:
    """Settings that select one engine (Milvus: a fresh collection prefix per test)."""
    if request.param == "faiss":
        return {"vector_store": "faiss"}
    return {
        "vector_store": "milvus",
        "milvus_uri": request.getfixturevalue("milvus_lite_uri"),
        "milvus_collection_prefix": f"t{uuid.uuid4().hex[:12]}",
        "milvus_index_type": "FLAT",
    }


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def pg_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """A fresh PostgreSQL database (behaviour only PostgreSQL has: out-of-order commits)."""
    yield from _make_env(request, tmp_path, request.param)
