"""``facebridge service|db|gallery|keys`` commands (``transformer``:
:mod:`service.registry.commands`). They work on the database directly (no HTTP), with settings
from the environment (``FACEBRIDGE_*``).

Each command is a thin wrapper over a plain function with keyword-only arguments (also used
in-process, e.g. by the demo): :func:`db_upgrade`, :func:`gallery_import`,
:func:`gallery_rebuild`, :func:`keys_create`.
Every command except ``service run`` first brings the schema to the newest migration.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.settings import ServiceSettings

serve_app = typer.Typer(help="Run the HTTP service.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
gallery_app = typer.Typer(
    help="The gallery: import legacy vectors, rebuild the index, stats.", no_args_is_help=True
)
keys_app = typer.Typer(
    help="API keys (shown once at creation, stored hashed).", no_args_is_help=True
)


# ---------------------------------------------------------------------------------------------
# Plain functions (keyword-only)
# ---------------------------------------------------------------------------------------------
@dataclass
class Storage:
    """Settings + engine + session factory for one command (disposed on exit)."""

    settings: ServiceSettings
    engine: Engine
    session_factory: sessionmaker[Session]


@contextmanager
def open_storage(
    *, settings: ServiceSettings | None = None, upgrade: bool = True
) -> Iterator[Storage]:
    """Engine and sessions for ``settings`` (default: from env); upgrades the schema first."""
    from service.db.session import make_engine, make_session_factory, upgrade_database

    settings = settings or ServiceSettings()
    if upgrade:
        upgrade_database(url=settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        yield Storage(
            settings=settings, engine=engine, session_factory=make_session_factory(engine)
        )
    finally:
        engine.dispose()


def db_upgrade(*, settings: ServiceSettings | None = None, revision: str = "head") -> str | None:
    """``alembic upgrade <revision>`` on the configured database; returns the new revision."""
    from service.db.session import current_revision, make_engine, upgrade_database

    settings = settings or ServiceSettings()
    upgrade_database(url=settings.database_url, revision=revision)
    engine = make_engine(settings.database_url)
    try:
        return current_revision(engine=engine)
    finally:
        engine.dispose()


def gallery_import(
    *,
    path: Path,
    settings: ServiceSettings | None = None,
    model_id: str | None = None,
    format: str | None = None,
) -> Any:
    """Import a legacy gallery file into SQL (streamed, one transaction), then bring this
    machine's index (or the Milvus collection) up to date from the change log. ImportReport.

    Running services pick the faces up from the log within their poll interval anyway."""
    import logging

    from service.gallery.importer import import_gallery
    from service.gallery.opening import open_gallery
    from service.gallery.store import set_faiss_threads

    with open_storage(settings=settings) as storage:
        report = import_gallery(
            session_factory=storage.session_factory,
            source=path,
            format=format,  # type: ignore[arg-type]
            model_id=model_id,
            settings=storage.settings,
        )
        set_faiss_threads(storage.settings.faiss_threads)
        try:  # SQL is committed: the index is a cache, a failure here loses nothing
            sync, _ = open_gallery(
                session_factory=storage.session_factory, settings=storage.settings
            )
            sync.close()
        except Exception as exc:  # e.g. Milvus Lite's file held by a running service
            logging.getLogger(__name__).warning(
                "index not updated here (%s): the services apply the import from the change log",
                exc,
            )
        return report


def gallery_rebuild(*, settings: ServiceSettings | None = None) -> Any:
    """Rebuild the vector store from SQL (FAISS file, or the Milvus collection dropped and
    refilled) and save it; returns the full ConsistencyReport after."""
    from service.gallery.opening import rebuild_gallery
    from service.gallery.store import set_faiss_threads

    with open_storage(settings=settings) as storage:
        set_faiss_threads(storage.settings.faiss_threads)
        return rebuild_gallery(session_factory=storage.session_factory, settings=storage.settings)


def keys_create(
    *, scopes: list[str], name: str | None = None, settings: ServiceSettings | None = None
) -> tuple[Any, str]:
    """Create an API key; returns (ApiKeyInfo, plaintext)."""
    from service.keys import create_key

    with open_storage(settings=settings) as storage, storage.session_factory() as session:
        return create_key(session=session, scopes=scopes, name=name)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def print_json(value: Any) -> None:
    typer.echo(json.dumps(jsonable(value), indent=2, sort_keys=True))


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        typer.echo("(none)")
        return
    cells = [[str("" if r.get(c) is None else r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


# ---------------------------------------------------------------------------------------------
# service
# ---------------------------------------------------------------------------------------------
@serve_app.command("run")
def serve_run(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default FACEBRIDGE_HOST).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default FACEBRIDGE_PORT).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default FACEBRIDGE_WORKERS).")
    ] = None,
) -> None:
    """Serve the HTTP API with uvicorn (factory ``service.app:create_app``)."""
    import uvicorn

    settings = ServiceSettings()
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.workers,
        log_level=settings.log_level,
    )


# ---------------------------------------------------------------------------------------------
# db
# ---------------------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade_command(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations up to ``revision`` (default: the newest) on FACEBRIDGE_DATABASE_URL."""
    current = db_upgrade(revision=revision)
    typer.echo(f"database at revision {current}")


@db_app.command("current")
def db_current_command() -> None:
    """Print the database's migration revision."""
    from service.db.session import current_revision, make_engine

    engine = make_engine(ServiceSettings().database_url)
    try:
        typer.echo(current_revision(engine=engine) or "(not migrated)")
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# gallery
# ---------------------------------------------------------------------------------------------
@gallery_app.command("import")
def gallery_import_command(
    file: Annotated[Path, typer.Argument(help=".npz (old + name/external_id), .parquet or .csv")],
    model_id: Annotated[
        str | None, typer.Option("--model-id", help="Id of the old model that made the vectors.")
    ] = None,
    format: Annotated[
        str | None, typer.Option("--format", help="npz | parquet | csv (default: from suffix).")
    ] = None,
) -> None:
    """Import legacy vectors; idempotent per external id (re-running stores nothing new)."""
    report = gallery_import(path=file, model_id=model_id, format=format)
    print_json(report)


@gallery_app.command("rebuild")
def gallery_rebuild_command() -> None:
    """Rebuild the vector store from SQL (e.g. after changing FACEBRIDGE_INDEX_TYPE; for
    Milvus the collection is dropped and refilled)."""
    report = gallery_rebuild()
    typer.echo(report.detail)


@gallery_app.command("stats")
def gallery_stats_command(
    check: Annotated[
        bool, typer.Option("--check", help="Also compare the index's ids with SQL's (O(n)).")
    ] = False,
) -> None:
    """Counts, dimension, index type, vectors by source; index vs SQL (counts, or full ids)."""
    from service.gallery.opening import load_gallery_store
    from service.gallery.store import check_consistency, count_report, gallery_stats

    with open_storage() as storage, storage.session_factory() as session:
        store = load_gallery_store(
            session_factory=storage.session_factory, settings=storage.settings
        )
        stats = jsonable(gallery_stats(session=session, index=store, settings=storage.settings))
        stats["vector_store"] = storage.settings.vector_store
        stats["index_file"] = str(storage.settings.index_file)
        compare = check_consistency if check else count_report
        stats["index_consistent"] = (
            compare(session=session, index=store).consistent if store is not None else False
        )
        if store is not None:
            store.close()
        print_json(stats)


# ---------------------------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create_command(
    scope: Annotated[
        list[str], typer.Option("--scope", help="identify | enrol | admin (repeatable).")
    ],
    name: Annotated[str | None, typer.Option("--name", help="A label for the key.")] = None,
) -> None:
    """Create a key and print it ONCE on stdout (details on stderr)."""
    info, plaintext = keys_create(scopes=scope, name=name)
    typer.echo(
        f"created key {info.id} ({info.prefix}, scopes {','.join(info.scopes)}); "
        "it is shown only now",
        err=True,
    )
    typer.echo(plaintext)


@keys_app.command("list")
def keys_list_command() -> None:
    """Keys (never their secrets)."""
    from service.keys import list_keys

    with open_storage() as storage, storage.session_factory() as session:
        rows = []
        for info in list_keys(session=session):
            row = jsonable(info)
            row["scopes"] = ",".join(info.scopes)
            rows.append(row)
    print_table(
        rows, ["id", "prefix", "name", "scopes", "created_at", "last_used_at", "revoked_at"]
    )


@keys_app.command("revoke")
def keys_revoke_command(
    key_id: Annotated[int, typer.Argument(help="The key's id (keys list).")],
) -> None:
    """Revoke a key (it stops working at once)."""
    from service.keys import revoke_key

    with open_storage() as storage, storage.session_factory() as session:
        info = revoke_key(session=session, key_id=key_id)
    typer.echo(f"revoked key {info.id} ({info.prefix})")
