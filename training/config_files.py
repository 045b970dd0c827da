"""Reading a TOML or YAML config file into a mapping: the one reader every training config uses."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from service.errors import InvalidInput


def read_config_mapping(path: str | Path, *, what: str = "config") -> dict[str, Any]:
    """The top-level mapping of a ``.toml``, ``.yaml`` or ``.yml`` file.

    A missing file, another suffix, a parse error or a non-mapping top level raise
    :class:`InvalidInput` with one line naming the file and ``what`` it should have been.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"{what} not found: {p}")
    if p.suffix not in (".toml", ".yaml", ".yml"):
        raise InvalidInput(f"{p}: a {what} must be .toml, .yaml or .yml")
    try:
        if p.suffix == ".toml":
            data: Any = tomllib.loads(p.read_text())
        else:
            import yaml

            data = yaml.safe_load(p.read_text()) or {}
    except Exception as exc:  # tomllib / yaml / decoding errors: all one kind for the user
        raise InvalidInput(f"{p}: unreadable {what} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{p}: a {what} must hold a table/mapping")
    return data
