"""Engine, session factory and schema upgrade. Nothing here runs at import."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from service.errors import ServiceUnavailable

log = logging.getLogger(__name__)

ALEMBIC_DIR_ENV = "FACEBRIDGE_ALEMBIC_DIR"


def _prepare_sqlite_file(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url``. SQLite: parent directory created, foreign keys on, WAL, busy wait."""
    is_sqlite = make_url(url).get_backend_name() == "sqlite"
    if is_sqlite:
        _prepare_sqlite_file(url)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")  # ON DELETE CASCADE needs it
            cursor.execute("PRAGMA busy_timeout=30000")
            if make_url(url).database not in (None, "", ":memory:"):
                cursor.execute("PRAGMA journal_mode=WAL")  # several workers read while one writes
            cursor.close()

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def database_reachable(*, engine: Engine) -> bool:
    """True when a trivial query succeeds."""
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        return True
    except Exception as exc:
        log.warning("database unreachable: %s", type(exc).__name__)
        return False


def find_alembic_dir() -> Path:
    """The migrations folder: ``$FACEBRIDGE_ALEMBIC_DIR``, ``./alembic``, or beside the source.

    An installed (non-editable) package finds it in the working directory (docker: ``/app``).
    """
    candidates = []
    if os.environ.get(ALEMBIC_DIR_ENV):
        candidates.append(Path(os.environ[ALEMBIC_DIR_ENV]))
    candidates += [Path.cwd() / "alembic", Path(__file__).resolve().parents[2] / "alembic"]
    for candidate in candidates:
        if (candidate / "env.py").is_file():
            return candidate.resolve()
    raise ServiceUnavailable(
        "alembic migrations not found: run from the project directory or set "
        f"{ALEMBIC_DIR_ENV} to the folder holding env.py"
    )


def alembic_config(*, url: str):  # type: ignore[no-untyped-def]
    """An Alembic ``Config`` for ``url`` without reading alembic.ini."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(find_alembic_dir()))
    # '%' is ConfigParser interpolation; escape it so passwords with % survive.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(*, url: str, revision: str = "head") -> None:
    """``alembic upgrade head`` on ``url`` (creates a fresh SQLite file's schema)."""
    from alembic import command

    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        command.upgrade(alembic_config(url=url), revision)  # Postgres: advisory lock in env.py
        return
    _prepare_sqlite_file(url)
    import fcntl

    # Several workers may start at once on one SQLite file: one migrates, the others wait.
    with open(Path(database).expanduser().with_suffix(".migrate.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            command.upgrade(alembic_config(url=url), revision)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def current_revision(*, engine: Engine) -> str | None:
    """The database's Alembic revision, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
