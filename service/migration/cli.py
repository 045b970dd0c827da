"""``facebridge migration simulate|status|undo|export-pairs``: the progressive migration from
the command line (on the database directly, settings from ``FACEBRIDGE_*``; simulate needs no
database)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Progressive migration: simulate it, its status, undo captures, export bridge pairs.",
    no_args_is_help=True,
)


@app.command("simulate")
def simulate_command(
    pairs: Annotated[Path, typer.Option("--pairs", help="pairs file (.npz or .npy directory)")],
    transformer: Annotated[Path, typer.Option("--transformer", help="transformer ONNX file")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
    seed: Annotated[int, typer.Option("--seed", help="stream order seed")] = 0,
    all_rows: Annotated[
        bool, typer.Option("--all-rows", help="every row, not only split=eval")
    ] = False,
) -> None:
    """Replay the migration on a pairs file with the service's own search, fusion and capture
    code (docs/PROTOCOL.md, "Progressive migration"): top-1 and FNIR before and after."""
    from service.migration.rule_settings import capture_rule_from_settings
    from service.migration.simulate import simulate

    result = simulate(
        pairs_path=pairs,
        transformer_path=transformer,
        seed=seed,
        rule=capture_rule_from_settings(),
        all_rows=all_rows,
    )
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
        return
    for key, value in result.items():
        typer.echo(f"{key:28s} {value}")


@app.command("status")
def status_command(
    days: Annotated[int, typer.Option("--days", min=1, max=366)] = 30,
) -> None:
    """Identities and faces per space, coverage, captures per day, undo history (JSON)."""
    from service.commands import open_storage
    from service.gallery.spaces import old_space
    from service.migration.status import migration_status

    with open_storage() as storage, storage.session_factory() as session:
        old = old_space(session=session, settings=storage.settings)
        status = migration_status(session, old_space=old, days=days)
    typer.echo(json.dumps(status.to_dict(), sort_keys=True, indent=2))


@app.command("undo")
def undo_command(
    identity: Annotated[int | None, typer.Option("--identity", help="identity id")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO 8601, inclusive")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO 8601, exclusive")] = None,
    transformer_version: Annotated[
        str | None, typer.Option("--transformer-version", help="captures scored by it")
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
) -> None:
    """Remove captured vectors matching every filter given (at least one); audited. Running
    services learn of it through the face change log."""
    from service.commands import open_storage
    from service.migration.captures import undo_captures
    from service.registry.audit import LOCAL_ACTOR

    with open_storage() as storage, storage.session_factory() as session:
        removed = undo_captures(
            session,
            actor=LOCAL_ACTOR,
            identity_id=identity,
            since=_instant(since),
            until=_instant(until),
            transformer_version=transformer_version,
            reason=reason,
        )
    typer.echo(json.dumps({"faces_removed": len(removed), "face_ids": removed}))


@app.command("export-pairs")
def export_pairs_command(
    out: Annotated[Path, typer.Option("--out", help="pairs file to write (.npz)")],
) -> None:
    """Every capture as a bridge pair (captured native vector, the identity's legacy
    template), in the pairs contract: `facebridge transformer fit --pairs kit.npz --pairs
    FILE.npz` can refit on the deployment's own domain."""
    from dataclasses import asdict

    from service.commands import open_storage
    from service.migration.export import export_capture_pairs

    with open_storage() as storage, storage.session_factory() as session:
        report = export_capture_pairs(session, out=out)
    typer.echo(json.dumps(asdict(report)))


def _instant(value: str | None) -> datetime | None:
    """An ISO 8601 time (UTC when it names no zone); None for None."""
    from service.errors import InvalidInput

    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(f"not an ISO 8601 time: {value!r}") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
