"""Every loss against a naive (loop) reference: value and gradient."""

from __future__ import annotations

import math

import pytest
import torch

from training.transformers.losses import (
    MappingLoss,
    batch_contrastive_loss,
    cosine_mse_loss,
    identity_softmax_loss,
)


def naive_cosine_mse(pred, target, alpha, beta):
    total_cos, total_sq = 0.0, 0.0
    for p, t in zip(pred, target, strict=True):
        dot = sum(p[k] * t[k] for k in range(len(p)))
        norm_p = torch.sqrt(sum(v * v for v in p))
        norm_t = torch.sqrt(sum(v * v for v in t))
        total_cos = total_cos + (1 - dot / (norm_p * norm_t))
        total_sq = total_sq + sum((p[k] - t[k]) ** 2 for k in range(len(p)))
    n, d = len(pred), len(pred[0])
    return alpha * total_cos / n + beta * total_sq / (n * d)


def naive_identity_softmax(pred, label, means, temperature, margin):
    total = 0.0
    for p, y in zip(pred, label, strict=True):
        unit = p / torch.sqrt(sum(v * v for v in p))
        logits = []
        for c, m in enumerate(means):
            cos = sum(unit[k] * m[k] for k in range(len(m)))
            logits.append((cos - (margin if c == int(y) else 0.0)) / temperature)
        log_z = torch.log(sum(torch.exp(v) for v in logits))
        total = total + (log_z - logits[int(y)])
    return total / len(pred)


def naive_batch_contrastive(pred, target, label, temperature):
    total = 0.0
    for i, p in enumerate(pred):
        unit_p = p / torch.sqrt(sum(v * v for v in p))
        exps, pos = [], []
        for j, t in enumerate(target):
            unit_t = t / torch.sqrt(sum(v * v for v in t))
            e = torch.exp(sum(unit_p[k] * unit_t[k] for k in range(len(p))) / temperature)
            exps.append(e)
            if int(label[j]) == int(label[i]):
                pos.append(e)
        total = total - torch.log(sum(pos) / sum(exps))
    return total / len(pred)


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(6, 5, generator=g, dtype=torch.float64)
    means = torch.nn.functional.normalize(torch.randn(4, 5, generator=g, dtype=torch.float64))
    label = torch.tensor([0, 1, 2, 3, 1, 0])
    return pred, target, means, label


def _value_and_grad(fn, pred):
    value = fn(pred)
    (grad,) = torch.autograd.grad(value, pred)
    return value.detach(), grad


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (0.0, 1.0), (1.0, 0.1), (3.0, 2.0)])
def test_cosine_mse_matches_naive(alpha: float, beta: float) -> None:
    pred, target, _, _ = _inputs()
    got = _value_and_grad(
        lambda p: cosine_mse_loss(p, target, cos_weight=alpha, mse_weight=beta)["total"], pred
    )
    ref = _value_and_grad(lambda p: naive_cosine_mse(p, target, alpha, beta), pred)
    torch.testing.assert_close(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1])


def test_cosine_mse_names_its_terms() -> None:
    pred, target, _, _ = _inputs()
    terms = cosine_mse_loss(pred, target, cos_weight=2.0, mse_weight=0.5)
    assert set(terms) == {"total", "cos", "mse"}
    torch.testing.assert_close(terms["total"], 2.0 * terms["cos"] + 0.5 * terms["mse"])
    assert float(cosine_mse_loss(target, target)["cos"]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("temperature", "margin"), [(1.0, 0.0), (0.05, 0.0), (0.1, 0.2)])
def test_identity_softmax_matches_naive(temperature: float, margin: float) -> None:
    pred, _, means, label = _inputs(1)
    got = _value_and_grad(
        lambda p: identity_softmax_loss(p, label, means, temperature=temperature, margin=margin)[
            "total"
        ],
        pred,
    )
    ref = _value_and_grad(
        lambda p: naive_identity_softmax(p, label, means, temperature, margin), pred
    )
    torch.testing.assert_close(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1])


def test_identity_softmax_uniform_logits_give_log_classes() -> None:
    means = torch.eye(4, dtype=torch.float64)
    pred = torch.ones(2, 4, dtype=torch.float64)
    terms = identity_softmax_loss(pred, torch.tensor([0, 3]), means, temperature=1.0)
    assert float(terms["id"]) == pytest.approx(math.log(4))


def test_mapping_loss_sums_weighted_terms_and_matches_naive() -> None:
    pred, target, means, label = _inputs(2)
    loss = MappingLoss(
        cos_weight=1.0, mse_weight=0.1, id_weight=0.5, temperature=0.1, class_means=means
    )
    got = _value_and_grad(lambda p: loss(p, target, label)["total"], pred)
    ref = _value_and_grad(
        lambda p: (
            naive_cosine_mse(p, target, 1.0, 0.1)
            + 0.5 * naive_identity_softmax(p, label, means, 0.1, 0.0)
        ),
        pred,
    )
    torch.testing.assert_close(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1])
    assert {"total", "cos", "mse", "id", "id_acc"} <= set(loss(pred, target, label))


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_batch_contrastive_matches_naive(temperature: float) -> None:
    pred, target, _, label = _inputs(3)
    got = _value_and_grad(
        lambda p: batch_contrastive_loss(p, target, label, temperature=temperature)["total"], pred
    )
    ref = _value_and_grad(lambda p: naive_batch_contrastive(p, target, label, temperature), pred)
    torch.testing.assert_close(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1])
    assert "contrast" in MappingLoss(contrast_weight=0.5)(pred, target, label)
