"""The ``facebridge`` command. Sub-commands live beside their domain; this file only assembles.

The service's own groups are listed in :data:`BUILTIN_GROUPS`. Every other group is a plugin:
an entry point in the ``facebridge.commands`` group (docs/cli.md) whose name is the command
group and whose object is a ``typer.Typer``. A plugin named like an existing group adds its
commands to that group (``training`` adds ``fit`` and ``evaluate`` to ``transformer``). A plugin
whose module or one of its optional dependencies is not installed (the service image has no
``training`` and no torch) is simply absent: the service side names no training module.

Errors: a usage mistake prints the usage line and one error line and exits 2; an error the
user can act on (:class:`~service.errors.FacebridgeError`, a missing file) prints one line and
exits 2; anything unexpected prints one line naming the log file that holds the traceback and
exits 1 (:mod:`service.cli_errors`).
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points

import typer

from service.cli_errors import report_unexpected
from service.errors import FacebridgeError

ENTRY_POINT_GROUP = "facebridge.commands"
# (group name, module, attribute): the service's own command groups, each a typer.Typer.
BUILTIN_GROUPS: tuple[tuple[str, str, str], ...] = (
    ("service", "service.commands", "serve_app"),
    ("gallery", "service.commands", "gallery_app"),
    ("transformer", "service.registry.commands", "transformer_app"),
    ("keys", "service.commands", "keys_app"),
    ("db", "service.commands", "db_app"),
    ("migration", "service.migration.cli", "app"),
)
# Old spellings kept for one release as hidden aliases (old -> current); each use prints one
# deprecation line on stderr.
DEPRECATED_ALIASES: dict[str, str] = {"transformers": "transformer"}
# A plugin failing to import for want of one of these is skipped (an extra not installed).
OPTIONAL_MODULES = frozenset(
    {"training", "torch", "matplotlib", "safetensors", "onnxscript", "dlib", "tqdm", "yaml"}
)

log = logging.getLogger(__name__)


def load_plugin(entry_point: EntryPoint) -> typer.Typer | None:
    """The entry point's Typer, or None when its side (or an extra it needs) is not installed;
    a bug inside an installed module still raises."""
    try:
        plugin = entry_point.load()
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in OPTIONAL_MODULES or entry_point.module.split(".")[0] == missing:
            log.debug("command group %s not installed (%s)", entry_point.name, exc.name)
            return None
        raise
    if not isinstance(plugin, typer.Typer):
        raise TypeError(f"entry point {entry_point.name} ({entry_point.value}) is not a Typer")
    return plugin


def _command_names(app: typer.Typer) -> set[str]:
    return {
        info.name or info.callback.__name__.replace("_", "-")
        for info in app.registered_commands
        if info.callback is not None
    }


def merge_groups(name: str, sources: list[typer.Typer]) -> typer.Typer:
    """One group holding the commands of every source (the first gives the help); two sources
    defining the same command, or a source with its own callback, is a packaging bug."""
    if len(sources) == 1:
        return sources[0]
    merged = typer.Typer(help=sources[0].info.help, no_args_is_help=True)
    seen: set[str] = set()
    for source in sources:
        if source.registered_callback is not None:
            raise RuntimeError(f"command group {name}: a merged group cannot have a callback")
        clash = seen & _command_names(source)
        if clash:
            raise RuntimeError(f"command group {name}: {sorted(clash)} defined twice")
        seen |= _command_names(source)
        merged.registered_commands.extend(source.registered_commands)
        merged.registered_groups.extend(source.registered_groups)
    return merged


def _warn_deprecated(old: str, new: str) -> Callable[[], None]:
    def callback() -> None:
        print(f"warning: 'facebridge {old}' is deprecated; use 'facebridge {new}'", file=sys.stderr)

    return callback


def build_app() -> typer.Typer:
    """The root command: built-in groups, then the ``facebridge.commands`` plugins."""
    groups: dict[str, list[typer.Typer]] = {}
    for group, module_name, attr in BUILTIN_GROUPS:
        groups.setdefault(group, []).append(getattr(importlib.import_module(module_name), attr))
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        plugin = load_plugin(entry_point)
        if plugin is not None:
            groups.setdefault(entry_point.name, []).append(plugin)
    app = typer.Typer(
        name="facebridge",
        help="Upgrade a face-recognition model without re-enrolling anyone.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    merged = {name: merge_groups(name, sources) for name, sources in groups.items()}
    for name, sub in merged.items():
        app.add_typer(sub, name=name)
    for old, new in DEPRECATED_ALIASES.items():
        if new in merged:
            app.add_typer(merged[new], name=old, hidden=True, callback=_warn_deprecated(old, new))
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: the command's exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app = build_app()
        result = app(args=args, standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # usage errors (usage line + one line), bad params
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            print(f"Error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except FacebridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        return report_unexpected(exc, argv=args)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
