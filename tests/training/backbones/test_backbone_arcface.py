"""ArcFace against a naive reference (acos, per element, float64): value and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from service.errors import InvalidInput
from training.backbones.arcface import ArcFaceHead


def naive_arcface_loss(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: list[int],
    *,
    s: float,
    m: float,
    easy_margin: bool,
) -> torch.Tensor:
    total = embeddings.new_zeros(())
    for i, label in enumerate(labels):
        e = embeddings[i] / embeddings[i].norm()
        logits = []
        for j in range(weight.shape[0]):
            w = weight[j] / weight[j].norm()
            cos = (e * w).sum()
            if j == label:
                theta = torch.acos(cos)
                if easy_margin:
                    use_margin = bool(cos.detach() > 0)
                    value = torch.cos(theta + m) if use_margin else cos
                elif float(theta.detach()) + m < math.pi:
                    value = torch.cos(theta + m)
                else:  # the linear continuation past pi - m
                    value = cos - m * math.sin(m)
            else:
                value = cos
            logits.append(s * value)
        row = torch.stack(logits)
        total = total - (row[label] - torch.logsumexp(row, dim=0))
    return total / len(labels)


def _case(seed: int, *, far: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, c, d = 6, 5, 8
    weight = torch.randn(c, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (n,), generator=g)
    emb = torch.randn(n, d, generator=g, dtype=torch.float64)
    if far:
        # Half the rows point almost opposite their class centre: theta > pi - m.
        emb[: n // 2] = -weight[labels[: n // 2]] + 0.05 * emb[: n // 2]
    return emb, weight, labels


@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("far", [False, True])
def test_matches_naive_reference(easy_margin: bool, far: bool) -> None:
    emb, weight, labels = _case(3, far=far)
    s, m = 64.0, 0.5
    head = ArcFaceHead(
        embedding_dim=emb.shape[1],
        num_classes=weight.shape[0],
        scale=s,
        margin=m,
        easy_margin=easy_margin,
    ).double()
    with torch.no_grad():
        head.weight.copy_(weight)
    e1 = emb.clone().requires_grad_(True)
    loss = head(e1, labels).loss
    loss.backward()

    e2 = emb.clone().requires_grad_(True)
    w2 = weight.clone().requires_grad_(True)
    ref = naive_arcface_loss(e2, w2, labels.tolist(), s=s, m=m, easy_margin=easy_margin)
    ref.backward()

    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(head.weight.grad, w2.grad, rtol=1e-6, atol=1e-9)


def test_margin_raises_the_loss_and_zero_margin_is_softmax() -> None:
    emb, weight, labels = _case(5, far=False)
    losses = {}
    for m in (0.0, 0.5):
        head = ArcFaceHead(embedding_dim=8, num_classes=5, scale=16.0, margin=m).double()
        with torch.no_grad():
            head.weight.copy_(weight)
        losses[m] = float(head(emb, labels).loss.detach())
    cos = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(weight).T
    plain = torch.nn.functional.cross_entropy(16.0 * cos, labels)
    assert losses[0.0] == pytest.approx(float(plain), rel=1e-9)
    assert losses[0.5] > losses[0.0]


def test_gradient_is_finite_on_the_class_centre() -> None:
    weight = torch.randn(3, 4, dtype=torch.float64)
    head = ArcFaceHead(embedding_dim=4, num_classes=3).double()
    with torch.no_grad():
        head.weight.copy_(weight)
    emb = weight[[0, 1]].clone().requires_grad_(True)  # cos = 1 exactly for the target
    head(emb, torch.tensor([0, 1])).loss.backward()
    assert torch.isfinite(emb.grad).all()


def test_invalid_head() -> None:
    with pytest.raises(InvalidInput):
        ArcFaceHead(embedding_dim=4, num_classes=1)
