"""torchrun's environment (rank, local rank, world size) and the device each process uses."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from service.errors import InvalidInput


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_distributed() -> DistEnv:
    """torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; a plain run has none of them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    return DistEnv(
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=world,
    )


def resolve_device(device: str, dist: DistEnv) -> torch.device:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidInput(f"device {device!r} asked for, but CUDA is not available here")
        if dist.enabled:
            return torch.device("cuda", dist.local_rank)
        return torch.device(device)
    if device != "cpu":
        raise InvalidInput(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return torch.device("cpu")
