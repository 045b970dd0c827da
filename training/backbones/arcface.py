"""ArcFace: additive angular margin softmax (Deng et al., 2019).

For the target class the logit ``s * cos(theta)`` becomes ``s * cos(theta + m)``. Written in terms
of the cosine only (no ``acos``), so the gradient is finite everywhere:

    cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m),  sin(theta) = sqrt(1 - cos^2(theta))

``theta + m`` must stay below pi or the logit stops decreasing in theta (the loss would *reward*
moving away from the class centre). Two published fixes, both here:

- default ("threshold"): when ``theta > pi - m`` use the linear continuation
  ``cos(theta) - m * sin(m)`` instead, which stays monotonic;
- ``easy_margin``: apply the margin only where ``cos(theta) > 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from service.errors import InvalidInput
from training.backbones.iresnet import IResNet, backbone_from_config

if TYPE_CHECKING:
    from training.backbones.config import TrainConfig

DEFAULT_SCALE = 64.0
DEFAULT_MARGIN = 0.5


def arcface_logits(
    cosine: torch.Tensor,
    labels: torch.Tensor,
    *,
    scale: float = DEFAULT_SCALE,
    margin: float = DEFAULT_MARGIN,
    easy_margin: bool = False,
) -> torch.Tensor:
    """Scaled logits [B, C] from cosines [B, C] with the angular margin on each row's label."""
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    threshold = math.cos(math.pi - margin)
    linear_penalty = math.sin(math.pi - margin) * margin
    target = cosine.gather(1, labels.view(-1, 1))
    # sqrt'(0) is infinite: keep 1 - cos^2 strictly positive so cos = +-1 has a finite gradient.
    sine = torch.sqrt((1.0 - target * target).clamp_min(1e-7))
    with_margin = target * cos_m - sine * sin_m
    if easy_margin:
        with_margin = torch.where(target > 0, with_margin, target)
    else:
        with_margin = torch.where(target > threshold, with_margin, target - linear_penalty)
    logits = cosine.scatter(1, labels.view(-1, 1), with_margin)
    return logits * scale


@dataclass(frozen=True)
class ArcFaceTerms:
    """The loss and what it is made of (for logging)."""

    loss: torch.Tensor
    logits: torch.Tensor
    accuracy: torch.Tensor  # fraction of rows whose arg-max (without margin) is the label


class ArcFaceHead(nn.Module):
    """Class centres [num_classes, embedding_dim] + ArcFace cross-entropy.

    Both the embeddings and the centres are L2-normalised inside the loss (the usual cosine
    classifier); this is a training-time head, not the embedding's normalisation point.
    """

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_classes: int,
        scale: float = DEFAULT_SCALE,
        margin: float = DEFAULT_MARGIN,
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise InvalidInput(f"ArcFace needs at least 2 classes, got {num_classes}")
        if not 0.0 <= margin < math.pi / 2:
            raise InvalidInput(f"ArcFace margin must be in [0, pi/2), got {margin}")
        if scale <= 0:
            raise InvalidInput(f"ArcFace scale must be positive, got {scale}")
        self.scale = float(scale)
        self.margin = float(margin)
        self.easy_margin = bool(easy_margin)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> ArcFaceTerms:
        # The training-time cosine classifier: not the embedding's normalisation point.
        cosine = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))
        cosine = cosine.clamp(-1.0, 1.0)
        logits = arcface_logits(
            cosine,
            labels,
            scale=self.scale,
            margin=self.margin,
            easy_margin=self.easy_margin,
        )
        loss = F.cross_entropy(logits, labels)
        accuracy = (cosine.argmax(dim=1) == labels).float().mean().detach()
        return ArcFaceTerms(loss=loss, logits=logits, accuracy=accuracy)


class BackboneWithHead(nn.Module):
    """One module for DDP: returns (loss, accuracy).

    With ``amp`` the backbone runs under bfloat16 autocast; the ArcFace head always runs in
    float32 (its margin arithmetic near cos = +-1 needs the precision).
    """

    def __init__(self, backbone: IResNet, head: ArcFaceHead, *, amp: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.amp = amp

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=self.amp):
            embeddings = self.backbone(images)
        terms = self.head(embeddings.float(), labels)
        return terms.loss, terms.accuracy

    @classmethod
    def for_config(cls, config: TrainConfig, *, num_classes: int) -> BackboneWithHead:
        """A fresh iResNet and ArcFace head as ``config`` describes them."""
        head = ArcFaceHead(
            embedding_dim=config.embedding_dim,
            num_classes=num_classes,
            scale=config.scale,
            margin=config.margin,
            easy_margin=config.easy_margin,
        )
        return cls(backbone_from_config(config), head, amp=config.amp)
