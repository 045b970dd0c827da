"""The typed backbone training config, loadable from TOML or YAML with base + override.

A config file may name a ``base`` file (relative to itself); its values are merged under the
file's own (recursively, nested tables merged key by key). Command-line options override last.
Built-in configs live in ``training/backbones/configs`` and can be named without a path
(``--config r50``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import ContractError, InvalidInput
from training.config_files import read_config_mapping

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = "r18"


class TrainConfig(BaseModel):
    """Everything a backbone training run needs except data, output and device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Model
    arch: Literal["r18", "r34", "r50", "r100"] = "r18"
    embedding_dim: int = Field(512, gt=0)
    width: int = Field(64, gt=0, description="channels of the first stage (64 = published)")
    input_size: int = Field(112, ge=16)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    zero_init_residual: bool = False
    # ArcFace head
    scale: float = Field(64.0, gt=0)
    margin: float = Field(0.5, ge=0.0, lt=1.5)
    easy_margin: bool = False
    # Optimisation
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    lr_power: float = Field(2.0, ge=0, description="polynomial decay power after warm-up")
    epochs: int = Field(20, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many steps (tests)")
    batch_size: int = Field(128, gt=1, description="per process")
    amp: bool = Field(False, description="bfloat16 autocast for the backbone (GPU)")
    # Data
    flip: float = Field(0.5, ge=0.0, le=1.0, description="horizontal flip probability")
    num_workers: int = Field(2, ge=0)
    min_images_per_class: int = Field(1, ge=1)
    # Run
    seed: int = 0
    threads: int | None = Field(None, gt=0, description="torch CPU threads; None = torch default")
    log_every: int = Field(50, gt=0)
    model_id: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A file path, or the name of a built-in config (``r18``, ``r50``, ``tiny``, ``base``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    builtin = CONFIG_DIR / f"{name_or_path}.toml"
    if builtin.is_file():
        return builtin
    names = ", ".join(sorted(f.stem for f in CONFIG_DIR.glob("*.toml")))
    raise InvalidInput(f"config {str(name_or_path)!r}: no such file or built-in config ({names})")


def load_config_dict(path: str | Path, *, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The merged raw values of ``path`` and its chain of ``base`` files."""
    p = resolve_config_path(path).resolve()
    if p in _seen:
        raise ContractError(f"{p}: config 'base' chain loops back to itself")
    data = read_config_mapping(p, what="training config")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (p.parent / str(base)) if not Path(str(base)).is_absolute() else Path(str(base))
    if not base_path.is_file():
        base_path = resolve_config_path(str(base))
    return _deep_merge(load_config_dict(base_path, _seen=(*_seen, p)), data)


def load_train_config(
    path: str | Path | None = None, *, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Config from ``path`` (or the default built-in) with ``overrides`` (None values ignored)."""
    values = load_config_dict(path if path is not None else DEFAULT_CONFIG)
    values = _deep_merge(values, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ContractError(f"training config: {where}: {first['msg']}") from exc
