"""Generate ``docs/configuration.md`` from :class:`service.settings.ServiceSettings`.

The settings class is the single source of truth; the Markdown table is derived from it and a
test (``tests/deploy/test_configuration_docs.py``) fails when the committed file is stale.

Regenerate::

    .venv/bin/python -m service.settings_docs --write
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
REGENERATE_COMMAND = ".venv/bin/python -m service.settings_docs --write"


def _type_name(annotation: Any) -> str:
    """A short, stable, human-readable type (``int``, ``str | None``, ``"cpu" | "cuda"``)."""
    if annotation is None or annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a).replace("'", '"') for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return " | ".join(repr(m.value).replace("'", '"') for m in annotation)
        if issubclass(annotation, SecretStr | SecretBytes):
            return "secret string"
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
    else:
        value = field.default
    if value is PydanticUndefined:
        return "**required**"
    if isinstance(value, SecretStr | SecretBytes):
        return "(secret)"
    if value is None:
        return "unset"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        # Relative paths are relative to the working directory: show it (``Path("./var")``
        # prints as ``var``).
        value = str(value) if value.is_absolute() else f"./{value}"
    if isinstance(value, tuple | list):
        value = ",".join(str(v) for v in value)
    text = str(value)
    return f"`{text}`" if text else '`""`'


def _env_names(settings_cls: type[BaseModel], name: str, field: FieldInfo) -> list[str]:
    alias = field.validation_alias or field.alias
    if isinstance(alias, str):
        return [alias.upper()]
    choices = getattr(alias, "choices", None)
    if choices:
        return [str(c).upper() for c in choices if isinstance(c, str)]
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    return [f"{prefix}{name}".upper()]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_configuration(settings_cls: type[BaseModel] | None = None) -> str:
    """The whole ``docs/configuration.md`` text for ``settings_cls`` (default: ServiceSettings)."""
    if settings_cls is None:
        from service.settings import ServiceSettings

        settings_cls = ServiceSettings
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    env_file = settings_cls.model_config.get("env_file")
    env_file_text = (
        f", then from the file `{env_file}` in the working directory" if env_file else ""
    )
    lines = [
        "# Configuration reference",
        "",
        "<!-- GENERATED from service/settings.py by `python -m service.settings_docs --write`;",
        "     do not edit by hand (tests/deploy/test_configuration_docs.py checks it). -->",
        "",
        f"The service reads its settings from environment variables with the prefix `{prefix}`",
        f"(case-insensitive){env_file_text}. Class: "
        f"`{settings_cls.__module__}.{settings_cls.__qualname__}`.",
        "Secrets never live in files of this repository; settings refuse placeholder values.",
        "",
        "| variable | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in settings_cls.model_fields.items():
        env = " / ".join(f"`{e}`" for e in _env_names(settings_cls, name, field))
        description = field.description or "(undocumented)"
        lines.append(
            f"| {env} | {_cell(_type_name(field.annotation))} | {_cell(_default_text(field))} "
            f"| {_cell(description)} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {DOC_PATH}")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render_configuration()
    if args.write:
        DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
        DOC_PATH.write_text(text)
        print(f"wrote {DOC_PATH}")
        return 0
    if args.check:
        current = DOC_PATH.read_text() if DOC_PATH.is_file() else ""
        if current != text:
            print(f"{DOC_PATH} is stale; regenerate with: {REGENERATE_COMMAND}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
