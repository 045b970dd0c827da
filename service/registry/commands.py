"""``facebridge transformer upload|list|show|activate|rollback|delete``: the registry's commands.

The training side adds ``fit``, ``evaluate``... to the same group through the
``facebridge.commands`` entry point (:mod:`service.cli`, docs/cli.md).
:func:`transformer_upload` is the plain function (keyword-only) behind ``upload``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from service.commands import jsonable, open_storage, print_json, print_table
from service.settings import ServiceSettings

transformer_app = typer.Typer(
    help="Transformers: upload, list, activate, roll back, delete (and fit, evaluate with the "
    "training side installed).",
    no_args_is_help=True,
)


def transformer_upload(
    *,
    path: Path,
    settings: ServiceSettings | None = None,
    activate: bool = False,
    note: str | None = None,
) -> Any:
    """Validate and store a transformer ONNX file; optionally activate it. StoredTransformer."""
    from service.errors import InvalidInput
    from service.registry.store import upload_transformer

    if not Path(path).is_file():
        raise InvalidInput(f"transformer file not found: {path}")
    with open_storage(settings=settings) as storage, open(path, "rb") as handle:
        return upload_transformer(
            session_factory=storage.session_factory,
            settings=storage.settings,
            data=handle,
            filename=Path(path).name,
            activate=activate,
            note=note,
        )


_TRANSFORMER_COLUMNS = [
    "version",
    "state",
    "recipe",
    "fusion_weight",
    "input_dim",
    "output_dim",
    "source_model",
    "target_model",
    "threshold",
    "created_at",
]


@transformer_app.command("upload")
def transformer_upload_command(
    file: Annotated[Path, typer.Argument(help="Transformer ONNX file.")],
    activate: Annotated[
        bool, typer.Option("--activate", help="Activate it after validation.")
    ] = False,
    note: Annotated[str | None, typer.Option(help="Free-text note stored with it.")] = None,
) -> None:
    """Validate and store a transformer (refused with one error line if it does not fit)."""
    info = transformer_upload(path=file, activate=activate, note=note)
    print_json(info)


@transformer_app.command("list")
def transformers_list_command() -> None:
    """All stored versions; the active one is marked."""
    from service.registry.store import list_transformers

    with open_storage() as storage, storage.session_factory() as session:
        rows = [jsonable(i) for i in list_transformers(session=session, settings=storage.settings)]
    print_table(rows, _TRANSFORMER_COLUMNS)


@transformer_app.command("show")
def transformers_show_command(version: Annotated[str, typer.Argument()]) -> None:
    """Everything stored about one version (metrics included)."""
    from service.registry.store import get_transformer

    with open_storage() as storage, storage.session_factory() as session:
        print_json(get_transformer(session=session, settings=storage.settings, version=version))


@transformer_app.command("activate")
def transformers_activate_command(version: Annotated[str, typer.Argument()]) -> None:
    """Make VERSION the active transformer (workers swap within the poll interval)."""
    from service.registry.store import activate_transformer

    with open_storage() as storage:
        info = activate_transformer(
            session_factory=storage.session_factory, settings=storage.settings, version=version
        )
    typer.echo(f"active: {info.version}")


@transformer_app.command("rollback")
def transformers_rollback_command() -> None:
    """Re-activate the previously active version."""
    from service.registry.store import rollback_transformer

    with open_storage() as storage:
        info = rollback_transformer(
            session_factory=storage.session_factory, settings=storage.settings
        )
    typer.echo(f"active: {info.version}")


@transformer_app.command("delete")
def transformers_delete_command(version: Annotated[str, typer.Argument()]) -> None:
    """Delete an inactive version and its file (the active one is refused)."""
    from service.registry.store import delete_transformer

    with open_storage() as storage:
        delete_transformer(
            session_factory=storage.session_factory, settings=storage.settings, version=version
        )
    typer.echo(f"deleted: {version}")
