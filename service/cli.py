"""The ``facebridge`` command. Sub-commands live beside their domain; this file only assembles.

Errors a user can act on print as one line (no traceback) and exit with status 2.
Training commands are registered only when the training side is installed (it needs torch,
which each command imports lazily).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import click
import typer

from service.errors import FacebridgeError

# (module, attribute, command group name): each attribute is a typer.Typer.
SUBCOMMANDS: tuple[tuple[str, str, str], ...] = (
    ("service.commands", "serve_app", "service"),
    ("service.commands", "gallery_app", "gallery"),
    ("service.commands", "transformers_app", "transformers"),
    ("service.commands", "keys_app", "keys"),
    ("service.commands", "db_app", "db"),
    ("training.transformers.cli", "app", "transformer"),
    ("training.evaluation.cli", "app", "experiments"),
    ("training.data.cli", "app", "pairs"),
    ("training.backbones.cli", "app", "backbone"),
    ("training.demo", "app", "demo"),
)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="facebridge",
        help="Upgrade a face-recognition model without re-enrolling anyone.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for module_name, attr, group in SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A side that is not installed (e.g. training in the service image) is simply absent;
            # a bug inside one of our own modules must still surface.
            if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
                continue
            if exc.name in {"torch", "matplotlib", "safetensors", "onnxscript", "dlib"}:
                continue
            raise
        sub = getattr(module, attr, None)
        if sub is not None:
            app.add_typer(sub, name=group)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    app = build_app()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=args, standalone_mode=False)
    except FacebridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except click.exceptions.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except click.exceptions.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (OSError, ValueError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
