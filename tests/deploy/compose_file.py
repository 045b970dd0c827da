"""Read docker/compose.yaml the way Docker Compose does, for tests without a Docker engine.

Only what the tests need: YAML, ``.env`` files (KEY=VALUE, comments, optional quotes) and
variable interpolation (``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
``${VAR:?error}``, ``${VAR?error}``, ``$$`` for a literal ``$``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
ENV_EXAMPLE = DOCKER_DIR / ".env.example"

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    pass


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    with open(path) as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict) or "services" not in data:
        raise ValueError(f"{path}: not a compose file (no services)")
    return data


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; ``#`` comments and blank lines ignored; surrounding quotes removed."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: not KEY=VALUE: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``${...}`` substitution of one string."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("plain")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else interpolate(arg, env)
        if op == "-":
            return value if value is not None else interpolate(arg, env)
        if op == ":?" and not value:
            raise InterpolationError(f"{name}: {arg}")
        if op == "?" and value is None:
            raise InterpolationError(f"{name}: {arg}")
        return value or ""

    return _VAR.sub(replace, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(n, env) for n in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def referenced_variables(text: str) -> dict[str, bool]:
    """Variable name -> whether it has a default (``:-``/``-``) in ``text``."""
    found: dict[str, bool] = {}
    for match in _VAR.finditer(text):
        name = match.group("braced") or match.group("plain")
        if name:
            has_default = match.group("op") in (":-", "-")
            found[name] = found.get(name, True) and has_default
    return found


def service_environment(
    service: Mapping[str, Any], *, compose_dir: Path, env_file_values: Mapping[str, str] | None
) -> dict[str, str]:
    """A service's container environment: its env_file(s), then ``environment`` on top
    (Compose's precedence). ``env_file_values`` stands in for the service's env_file when given."""
    result: dict[str, str] = {}
    env_files = service.get("env_file", [])
    if isinstance(env_files, str | dict):
        env_files = [env_files]
    if env_files:
        if env_file_values is not None:
            result.update(env_file_values)
        else:
            for entry in env_files:
                path = entry["path"] if isinstance(entry, dict) else entry
                result.update(read_env_file(compose_dir / path))
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    result.update({k: "" if v is None else str(v) for k, v in environment.items()})
    return result


def image_env(dockerfile: Path, *, stage: str = "service") -> dict[str, str]:
    """KEY=VALUE pairs of the ENV instructions of one stage of a Dockerfile (``$VAR`` references
    left as written)."""
    env: dict[str, str] = {}
    current = None
    for line in re.sub(r"\\\n", " ", dockerfile.read_text()).splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() == "FROM":
            current = words[-1] if len(words) >= 4 and words[-2].upper() == "AS" else None
        elif words[0].upper() == "ENV" and current == stage:
            env.update(w.split("=", 1) for w in words[1:] if "=" in w)
    return env


def volume_mounts(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(source, container path) for each short-syntax volume."""
    mounts = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            mounts.append((str(entry.get("source", "")), str(entry["target"])))
            continue
        parts = str(entry).split(":")
        mounts.append((parts[0], parts[1]))
    return mounts
