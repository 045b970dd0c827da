"""Losses for fitting a transformer. Each returns its named terms; ``total`` is what to minimise.

- :func:`cosine_mse_loss`: the study's ``alpha * (1 - cos) + beta * MSE`` (alpha >> beta won).
- :func:`identity_softmax_loss`: identity-aware; the mapped vector must be closer (by cosine) to
  its own identity's old-space class mean than to every other identity's, with a temperature
  and an additive cosine margin (CosFace-style) — exactly what a gallery search asks of it.
- :func:`batch_contrastive_loss`: identity-aware, like a gallery search: each mapped vector
  against every old-space vector of the batch (other identities = negatives).
- :class:`MappingLoss`: the weighted sum, configured by a recipe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cosine_mse_loss(
    pred: torch.Tensor, target: torch.Tensor, *, cos_weight: float = 1.0, mse_weight: float = 0.0
) -> dict[str, torch.Tensor]:
    """Mean over rows of ``1 - cos(pred, target)``; MSE over elements (as ``nn.MSELoss``)."""
    cos_term = (1.0 - F.cosine_similarity(pred, target, dim=1, eps=1e-8)).mean()
    mse_term = F.mse_loss(pred, target)
    return {
        "total": cos_weight * cos_term + mse_weight * mse_term,
        "cos": cos_term,
        "mse": mse_term,
    }


def identity_softmax_loss(
    pred: torch.Tensor,
    label_index: torch.Tensor,
    class_means: torch.Tensor,
    *,
    temperature: float = 0.05,
    margin: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Cross-entropy of cosine logits against unit old-space class means.

    ``label_index`` [batch] indexes rows of ``class_means`` [classes, d_old] (unit length).
    logits = (cos(pred, mean_c) - margin * [c == own]) / temperature.
    """
    cos = F.normalize(pred, dim=1, eps=1e-8) @ class_means.T
    if margin:
        cos = cos - margin * F.one_hot(label_index, class_means.shape[0]).to(cos.dtype)
    logits = cos / temperature
    ce = F.cross_entropy(logits, label_index)
    with torch.no_grad():
        acc = (logits.argmax(dim=1) == label_index).float().mean()
    return {"total": ce, "id": ce, "id_acc": acc}


def batch_contrastive_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    label: torch.Tensor,
    *,
    temperature: float = 0.05,
) -> dict[str, torch.Tensor]:
    """Identity-aware, gallery-like: each mapped vector against every OLD vector in the batch.

    logits_ij = cos(pred_i, target_j) / temperature; positives = rows j of the same identity
    (j = i included); loss_i = -log(sum_pos exp(logits_ij) / sum_j exp(logits_ij)), averaged.
    """
    logits = F.normalize(pred, dim=1, eps=1e-8) @ F.normalize(target, dim=1, eps=1e-8).T
    logits = logits / temperature
    positive = label[:, None] == label[None, :]
    log_all = torch.logsumexp(logits, dim=1)
    log_pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    loss = (log_all - log_pos).mean()
    return {"total": loss, "contrast": loss}


class MappingLoss(nn.Module):
    """``cos_weight * (1 - cos) + mse_weight * MSE + id_weight * identity softmax
    + contrast_weight * batch contrastive`` (labels: indices into ``class_means``)."""

    def __init__(
        self,
        *,
        cos_weight: float = 1.0,
        mse_weight: float = 0.0,
        id_weight: float = 0.0,
        temperature: float = 0.05,
        margin: float = 0.0,
        class_means: torch.Tensor | None = None,
        contrast_weight: float = 0.0,
        contrast_temperature: float = 0.05,
    ) -> None:
        super().__init__()
        self.contrast_weight, self.contrast_temperature = contrast_weight, contrast_temperature
        self.cos_weight, self.mse_weight, self.id_weight = cos_weight, mse_weight, id_weight
        self.temperature, self.margin = temperature, margin
        if id_weight and class_means is None:
            raise ValueError("an identity term needs class means")
        self.register_buffer("class_means", class_means, persistent=False)

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, label_index: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        terms = cosine_mse_loss(
            pred, target, cos_weight=self.cos_weight, mse_weight=self.mse_weight
        )
        if self.id_weight and label_index is not None:
            ident = identity_softmax_loss(
                pred,
                label_index,
                self.class_means,
                temperature=self.temperature,
                margin=self.margin,
            )
            terms["id"], terms["id_acc"] = ident["id"], ident["id_acc"]
            terms["total"] = terms["total"] + self.id_weight * ident["total"]
        if self.contrast_weight and label_index is not None:
            contrast = batch_contrastive_loss(
                pred, target, label_index, temperature=self.contrast_temperature
            )
            terms["contrast"] = contrast["contrast"]
            terms["total"] = terms["total"] + self.contrast_weight * contrast["total"]
        return terms
