"""Mapping networks, new-model space [batch, d_new] -> old-model space [batch, d_old].

Every model is a plain ``nn.Module`` whose ``forward(new_embedding)`` returns the unnormalised
old-space vector; normalisation happens in the loss (training) and in the runner (service).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from service.errors import InvalidInput
from training.transformers.recipes import MODEL_NAMES


class IdentityMap(nn.Module):
    """The floor: the new vector taken as is (only meaningful when dims are equal)."""

    def __init__(self, d_new: int, d_old: int) -> None:
        super().__init__()
        if d_new != d_old:
            raise InvalidInput(f"identity map needs equal dims, got {d_new} -> {d_old}")

    def forward(self, new_embedding: torch.Tensor) -> torch.Tensor:
        # A real op, so the exported graph's output is a node distinct from its input.
        return new_embedding * 1.0


class LinearMap(nn.Module):
    """One fully-connected layer (the study's baseline); also holds the closed-form maps."""

    def __init__(self, d_new: int, d_old: int, *, bias: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(d_new, d_old, bias=bias)

    def set_weights(self, weight: np.ndarray, bias: np.ndarray | None) -> None:
        """From a closed-form ``(weight [d_new, d_old], bias [d_old])``."""
        with torch.no_grad():
            self.fc.weight.copy_(torch.as_tensor(np.asarray(weight).T, dtype=torch.float32))
            if self.fc.bias is not None:
                b = np.zeros(self.fc.out_features) if bias is None else np.asarray(bias)
                self.fc.bias.copy_(torch.as_tensor(b, dtype=torch.float32))

    def forward(self, new_embedding: torch.Tensor) -> torch.Tensor:
        return self.fc(new_embedding)


class ResidualMLP(nn.Module):
    """A linear skip (optionally started from a closed-form map) plus a deeper MLP correction.

    The MLP's last layer starts at zero, so an initialised model starts exactly at the
    closed-form map and learns only what it adds.
    """

    def __init__(
        self, d_new: int, d_old: int, *, hidden: int = 512, depth: int = 2, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if depth < 1:
            raise InvalidInput(f"mlp depth must be >= 1, got {depth}")
        self.skip = LinearMap(d_new, d_old)
        layers: list[nn.Module] = []
        width = d_new
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        last = nn.Linear(width, d_old)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.body = nn.Sequential(*layers)

    def forward(self, new_embedding: torch.Tensor) -> torch.Tensor:
        return self.skip(new_embedding) + self.body(new_embedding)


class _ConvBlock(nn.Module):
    """A 1-D residual block: conv-BN-ReLU-conv-BN + skip, ReLU."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv1d(channels, channels, kernel, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class MSResNet(nn.Module):
    """The study's multi-scale 1-D-conv ResNet: the embedding as a 1-channel signal, three
    branches (kernels 3, 5, 7) of residual conv blocks, concatenated into one FC layer."""

    def __init__(
        self, d_new: int, d_old: int, *, channels: int = 16, blocks: int = 1, pool: int = 4
    ) -> None:
        super().__init__()
        if d_new % pool:
            raise InvalidInput(f"msresnet pool {pool} must divide d_new={d_new}")
        self.branches = nn.ModuleList()
        for kernel in (3, 5, 7):
            stem = [
                nn.Conv1d(1, channels, kernel, padding=kernel // 2, bias=False),
                nn.BatchNorm1d(channels),
                nn.ReLU(),
            ]
            body = [_ConvBlock(channels, kernel) for _ in range(blocks)]
            self.branches.append(nn.Sequential(*stem, *body, nn.AvgPool1d(pool)))
        self.fc = nn.Linear(3 * channels * (d_new // pool), d_old)

    def forward(self, new_embedding: torch.Tensor) -> torch.Tensor:
        signal = new_embedding.unsqueeze(1)
        feats = [branch(signal).flatten(1) for branch in self.branches]
        return self.fc(torch.cat(feats, dim=1))


class ResidualBottleneck(nn.Module):
    """Residual bottleneck transformation (RBT, Wang et al., "Unified Representation Learning
    for Cross Model Compatibility"): a linear projection into the old space followed by
    residual blocks ``h + W2 relu(BN(W1 h))`` through a narrow hidden layer."""

    def __init__(self, d_new: int, d_old: int, *, hidden: int = 64, blocks: int = 3) -> None:
        super().__init__()
        self.proj = LinearMap(d_new, d_old)
        self.blocks = nn.ModuleList()
        for _ in range(blocks):
            up = nn.Linear(hidden, d_old)
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
            self.blocks.append(
                nn.Sequential(nn.Linear(d_old, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), up)
            )

    def forward(self, new_embedding: torch.Tensor) -> torch.Tensor:
        h = self.proj(new_embedding)
        for block in self.blocks:
            h = h + block(h)
        return h


class ScaledAroundMean(nn.Module):
    """``mean + scale * (inner(x) - mean)``: re-inflates the identity-specific part of the output.

    Regression shrinks predictions towards the old space's common direction (dlib vectors sit
    at cosine ~0.9 to their mean); after L2 normalisation that over-weights each gallery
    vector's own alignment with the mean in the ranking. ``mean`` is the training targets' mean.
    """

    def __init__(self, inner: nn.Module, *, mean: np.ndarray, scale: float) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, new_embedding: torch.Tensor) -> torch.Tensor:
        return self.mean + self.scale * (self.inner(new_embedding) - self.mean)


class TwoWayMap(nn.Module):
    """Forward map new -> old and backward map old -> new side by side, for a two-way export:
    ``(new_embedding [b, d_new], gallery_old_embedding [g, d_old]) -> (f(new), h(gallery))``.
    The two batches are independent."""

    def __init__(self, forward_map: nn.Module, backward_map: nn.Module) -> None:
        super().__init__()
        self.forward_map = forward_map
        self.backward_map = backward_map

    def forward(
        self, new_embedding: torch.Tensor, gallery_old_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_map(new_embedding), self.backward_map(gallery_old_embedding)


def build_model(
    name: str,
    *,
    d_new: int,
    d_old: int,
    hidden: int = 512,
    depth: int = 2,
    dropout: float = 0.0,
    channels: int = 16,
) -> nn.Module:
    """A fresh model by name (see ``MODEL_NAMES``). Closed-form models get weights from fit."""
    if name == "identity":
        return IdentityMap(d_new, d_old)
    if name in ("ridge", "procrustes", "fc"):
        return LinearMap(d_new, d_old)
    if name == "mlp":
        return ResidualMLP(d_new, d_old, hidden=hidden, depth=depth, dropout=dropout)
    if name == "msresnet":
        return MSResNet(d_new, d_old, channels=channels, blocks=max(depth - 1, 0) or 1)
    if name == "rbt":
        return ResidualBottleneck(d_new, d_old, hidden=hidden, blocks=depth)
    raise InvalidInput(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def linear_part(model: nn.Module) -> LinearMap | None:
    """The linear map a closed-form init should write into, if the model has one."""
    if isinstance(model, LinearMap):
        return model
    if isinstance(model, ResidualMLP):
        return model.skip
    if isinstance(model, ResidualBottleneck):
        return model.proj
    return None
