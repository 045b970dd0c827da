"""iResNet face backbones (arcface_torch layout), written from the paper's description.

Input: float32 NCHW, RGB, ``(x - 127.5) / 127.5``, 112 x 112 by default.
Output: the un-normalised embedding (``embedding_dim``, 512 by default). L2 normalisation
happens once, in the service's backbone runner, never here.

Block (``IBasicBlock``): BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus a shortcut
(1x1 conv + BN when the shape changes). Head: BN2d -> flatten -> dropout -> FC -> BN1d.
``width`` scales every channel count (64 is the published model); tests use a small width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from service.errors import InvalidInput

if TYPE_CHECKING:
    from training.backbones.config import TrainConfig

# Number of blocks per stage.
ARCHS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
}
DEFAULT_INPUT_SIZE = 112
DEFAULT_EMBEDDING_DIM = 512
DEFAULT_WIDTH = 64
BN_EPS = 1e-5


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block of the iResNet family."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.conv1 = _conv3x3(in_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.prelu = nn.PReLU(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch, stride)
        self.bn3 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.shortcut: nn.Module
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch, eps=BN_EPS),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + self.shortcut(x)


def _stride2_size(size: int, times: int) -> int:
    # A 3x3 conv with padding 1 and stride 2 maps n -> ceil(n / 2).
    for _ in range(times):
        size = (size + 1) // 2
    return size


class IResNet(nn.Module):
    def __init__(
        self,
        layers: Sequence[int],
        *,
        embedding_dim: int = DEFAULT_EMBEDDING_DIM,
        width: int = DEFAULT_WIDTH,
        input_size: int = DEFAULT_INPUT_SIZE,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise InvalidInput(f"iResNet needs 4 stages of >= 1 block, got {list(layers)}")
        if width < 1 or embedding_dim < 1 or input_size < 16:
            raise InvalidInput("iResNet: width, embedding_dim must be >= 1 and input_size >= 16")
        if not 0.0 <= dropout < 1.0:
            raise InvalidInput(f"iResNet: dropout must be in [0, 1), got {dropout}")
        self.arch = next((name for name, n in ARCHS.items() if n == tuple(layers)), "custom")
        self.embedding_dim = embedding_dim
        self.input_size = input_size
        self.width = width
        channels = [width, width * 2, width * 4, width * 8]
        self.conv1 = _conv3x3(3, width)
        self.bn1 = nn.BatchNorm2d(width, eps=BN_EPS)
        self.prelu = nn.PReLU(width)
        stages: list[nn.Module] = []
        in_ch = width
        for n_blocks, out_ch in zip(layers, channels, strict=True):
            blocks = [IBasicBlock(in_ch, out_ch, stride=2)]
            blocks += [IBasicBlock(out_ch, out_ch) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        spatial = _stride2_size(input_size, 4)
        self.fc = nn.Linear(in_ch * spatial * spatial, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=BN_EPS)
        # The feature BN only re-centres and re-scales per dimension: its scale is fixed to 1 so
        # the embedding's overall scale is learned by the FC layer alone (as in arcface_torch).
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        self._init_weights(zero_init_residual=zero_init_residual)

    def _init_weights(self, *, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He initialisation keeps activations bounded through depth; arcface_torch's
                # N(0, 0.1) makes an untrained r50 output values near 1e2..1e3.
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            # Every block starts as the identity, which helps deep variants train from step one;
            # off by default because a randomly initialised export should be a rich random map.
            for module in self.modules():
                if isinstance(module, IBasicBlock):
                    nn.init.zeros_(module.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = self.fc(x)
        return self.features(x)


def get_model(
    name: str,
    *,
    embedding_dim: int = DEFAULT_EMBEDDING_DIM,
    width: int = DEFAULT_WIDTH,
    input_size: int = DEFAULT_INPUT_SIZE,
    dropout: float = 0.0,
    zero_init_residual: bool = False,
) -> IResNet:
    """Backbone factory: ``"r18"``, ``"r34"``, ``"r50"`` or ``"r100"``."""
    key = name.lower()
    if key not in ARCHS:
        raise InvalidInput(f"unknown backbone arch {name!r}; choose one of {', '.join(ARCHS)}")
    return IResNet(
        ARCHS[key],
        embedding_dim=embedding_dim,
        width=width,
        input_size=input_size,
        dropout=dropout,
        zero_init_residual=zero_init_residual,
    )


def backbone_from_config(config: TrainConfig) -> IResNet:
    """The (untrained) backbone a training config describes."""
    return get_model(
        config.arch,
        embedding_dim=config.embedding_dim,
        width=config.width,
        input_size=config.input_size,
        dropout=config.dropout,
        zero_init_residual=config.zero_init_residual,
    )
