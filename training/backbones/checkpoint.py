"""Checkpoints as safetensors: tensors only, never pickles (``torch.load`` of user files is unsafe).

One file holds the backbone (``backbone.*``), the ArcFace head (``head.*``) and the optimiser
state (``optimizer.<param index>.<name>`` tensors; scalars and param groups as JSON metadata),
plus the training config and progress as string metadata. A backbone-only file (what ``export``
needs) is the same format without the head and optimiser.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from service.errors import ContractError, InvalidInput
from service.files import atomic_path
from training.backbones.config import TrainConfig
from training.backbones.iresnet import ARCHS, IResNet, backbone_from_config

FORMAT = "facebridge.backbone-checkpoint.v1"
BACKBONE_PREFIX = "backbone."
HEAD_PREFIX = "head."
OPTIMIZER_PREFIX = "optimizer."


@dataclass(frozen=True)
class Progress:
    epochs_done: int = 0
    step: int = 0


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_checkpoint(
    path: str | Path,
    *,
    backbone: nn.Module,
    config: TrainConfig,
    progress: Progress,
    head: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    num_classes: int | None = None,
) -> Path:
    """Write atomically (temp file + ``os.replace``), so a crash never leaves half a checkpoint."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {BACKBONE_PREFIX + k: v for k, v in backbone.state_dict().items()}
    metadata: dict[str, str] = {
        "format": FORMAT,
        "config": config.to_json(),
        "epochs_done": str(progress.epochs_done),
        "step": str(progress.step),
    }
    if num_classes is not None:
        metadata["num_classes"] = str(num_classes)
    if head is not None:
        tensors.update({HEAD_PREFIX + k: v for k, v in head.state_dict().items()})
    if optimizer is not None:
        state = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, entry in state["state"].items():
            for name, value in entry.items():
                if isinstance(value, torch.Tensor) and value.ndim > 0:
                    tensors[f"{OPTIMIZER_PREFIX}{index}.{name}"] = value
                else:
                    number = value.item() if isinstance(value, torch.Tensor) else value
                    scalars.setdefault(str(index), {})[name] = number
        metadata["optimizer"] = json.dumps(
            {"param_groups": state["param_groups"], "scalars": scalars}
        )
    with atomic_path(p) as tmp:
        save_file(_contiguous(tensors), str(tmp), metadata=metadata)
    return p


@dataclass(frozen=True)
class LoadedCheckpoint:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    config: TrainConfig | None
    progress: Progress

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def num_classes(self) -> int | None:
        value = self.metadata.get("num_classes")
        return None if value is None else int(value)


def read_checkpoint(path: str | Path) -> LoadedCheckpoint:
    p = Path(path)
    if not p.is_file():
        raise ContractError(f"checkpoint not found: {p}")
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(p))
    except (SafetensorError, OSError) as exc:
        raise ContractError(f"{p}: not a readable safetensors file ({exc})") from exc
    config = None
    if "config" in metadata:
        try:
            config = TrainConfig.model_validate_json(metadata["config"])
        except ValueError as exc:
            raise ContractError(f"{p}: the stored training config is invalid ({exc})") from exc
    progress = Progress(
        epochs_done=int(metadata.get("epochs_done", 0)), step=int(metadata.get("step", 0))
    )
    return LoadedCheckpoint(tensors=tensors, metadata=metadata, config=config, progress=progress)


def restore_optimizer(optimizer: torch.optim.Optimizer, checkpoint: LoadedCheckpoint) -> None:
    """Load the optimiser state saved by :func:`save_checkpoint` into ``optimizer``."""
    raw = checkpoint.metadata.get("optimizer")
    if raw is None:
        raise ContractError("checkpoint holds no optimiser state; cannot resume")
    saved = json.loads(raw)
    state: dict[int, dict[str, Any]] = {}
    for key, value in checkpoint.section(OPTIMIZER_PREFIX).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, scalars in saved["scalars"].items():
        for name, number in scalars.items():
            # Adam keeps its step count as a 0-d tensor; SGD has none.
            state.setdefault(int(index), {})[name] = torch.tensor(float(number))
    try:
        optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise ContractError(f"checkpoint optimiser state does not fit this run ({exc})") from exc


def load_backbone(
    path: str | Path, *, arch: str | None = None, config: TrainConfig | None = None
) -> tuple[IResNet, TrainConfig]:
    """The backbone of a checkpoint (or backbone-only file), on CPU, in eval mode.

    The architecture comes from the stored config; ``arch``/``config`` are needed only for a
    file without one, and ``arch`` must agree with a stored config.
    """
    ckpt = read_checkpoint(path)
    cfg = ckpt.config or config
    if arch is not None and arch not in ARCHS:
        raise InvalidInput(f"unknown backbone arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if cfg is None:
        if arch is None:
            raise InvalidInput(f"{path}: the file stores no training config; pass --arch")
        cfg = TrainConfig(arch=arch)  # type: ignore[arg-type]
    if arch is not None and arch != cfg.arch:
        raise InvalidInput(f"{path}: checkpoint is {cfg.arch}, not {arch}")
    model = backbone_from_config(cfg)
    weights = ckpt.section(BACKBONE_PREFIX) or ckpt.tensors
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        detail = lines[0] if lines else str(exc)
        raise ContractError(
            f"{path}: weights do not fit {cfg.arch} (width {cfg.width}): {detail[:300]}"
        ) from exc
    return model.eval(), cfg
