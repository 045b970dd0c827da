from __future__ import annotations

import numpy as np
import pytest
import torch

from service.contracts import PairsSet
from service.errors import InvalidInput
from training.transformers.closed_form import procrustes_map, ridge_map
from training.transformers.data import normalized_pairs
from training.transformers.fit import fit_transformer
from training.transformers.models import MODEL_NAMES, ScaledAroundMean, build_model
from training.transformers.recipes import get_recipe


@pytest.mark.parametrize("name", [m for m in MODEL_NAMES if m != "identity"])
@pytest.mark.parametrize(("d_new", "d_old"), [(12, 16), (16, 8)])
def test_every_model_maps_any_dims(name: str, d_new: int, d_old: int) -> None:
    model = build_model(name, d_new=d_new, d_old=d_old, hidden=32, depth=2, channels=4).eval()
    out = model(torch.randn(5, d_new))
    assert out.shape == (5, d_old)
    assert torch.isfinite(out).all()


def test_identity_needs_equal_dims_and_returns_input() -> None:
    x = torch.randn(3, 8)
    assert torch.equal(build_model("identity", d_new=8, d_old=8)(x), x)
    with pytest.raises(InvalidInput, match="equal dims"):
        build_model("identity", d_new=8, d_old=4)


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(InvalidInput, match="unknown model"):
        build_model("attention", d_new=4, d_old=4)


def test_ridge_without_penalty_matches_numpy_lstsq() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((50, 6)), rng.standard_normal((50, 4))
    weight, bias = ridge_map(x, y, lam=0.0)
    design = np.hstack([x, np.ones((50, 1))])
    reference = np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(weight, reference[:-1], atol=1e-5)
    np.testing.assert_allclose(bias, reference[-1], atol=1e-5)


def test_ridge_penalty_matches_normal_equations() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((30, 3))
    weight, bias = ridge_map(x, y, lam=2.0)
    xc, yc = x - x.mean(0), y - y.mean(0)
    reference = np.linalg.solve(xc.T @ xc + 2.0 * np.eye(5), xc.T @ yc)
    np.testing.assert_allclose(weight, reference, atol=1e-5)
    np.testing.assert_allclose(x.mean(0) @ weight + bias, y.mean(0), atol=1e-5)


@pytest.mark.parametrize(("d_new", "d_old"), [(6, 6), (4, 7), (7, 4)])
def test_procrustes_is_orthogonal_and_recovers_a_rotation(d_new: int, d_old: int) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((80, d_new))
    q, _ = np.linalg.qr(rng.standard_normal((max(d_new, d_old), max(d_new, d_old))))
    rotation = q[:d_new, :d_old]
    weight, bias = procrustes_map(x, x @ rotation + 0.25)
    small = min(d_new, d_old)
    gram = weight.T @ weight if d_new >= d_old else weight @ weight.T
    np.testing.assert_allclose(gram, np.eye(small), atol=1e-5)
    if d_new == d_old:
        np.testing.assert_allclose(weight, rotation, atol=1e-5)
        np.testing.assert_allclose(bias, 0.25, atol=1e-5)


def test_closed_form_recipes_write_their_maps_into_the_model(pairs: PairsSet) -> None:
    train = normalized_pairs(pairs)
    fitted = fit_transformer(pairs=pairs, recipe="ridge", progress=False)
    weight, bias = ridge_map(train.new, train.old, lam=get_recipe("ridge").ridge_lambda)
    np.testing.assert_allclose(fitted.transform(train.new), train.new @ weight + bias, atol=1e-5)
    fitted = fit_transformer(pairs=pairs, recipe="procrustes", progress=False)
    weight, bias = procrustes_map(train.new, train.old)
    np.testing.assert_allclose(fitted.transform(train.new), train.new @ weight + bias, atol=1e-5)


def test_residual_models_start_exactly_at_their_closed_form_init(pairs: PairsSet) -> None:
    train = normalized_pairs(pairs)
    recipe = get_recipe("mlp").replace(epochs=0, hidden=16)
    fitted = fit_transformer(pairs=pairs, recipe=recipe, progress=False)
    weight, bias = ridge_map(train.new, train.old, lam=recipe.ridge_lambda)
    np.testing.assert_allclose(fitted.transform(train.new), train.new @ weight + bias, atol=1e-5)


def test_scaled_around_mean_reinflates_the_residual() -> None:
    inner = build_model("fc", d_new=4, d_old=3)
    mean = np.array([0.5, -0.2, 0.1], np.float32)
    model = ScaledAroundMean(inner, mean=mean, scale=1.5).eval()
    x = torch.randn(6, 4)
    expected = mean + 1.5 * (inner(x).detach().numpy() - mean)
    np.testing.assert_allclose(model(x).detach().numpy(), expected, atol=1e-6)


def test_auto_output_scale_matches_the_targets_spread(pairs: PairsSet) -> None:
    recipe = get_recipe("ridge").replace(output_scale=0.0, ridge_lambda=10.0)  # strong shrinkage
    fitted = fit_transformer(pairs=pairs, recipe=recipe, progress=False)
    train = normalized_pairs(pairs)
    mean = train.old.mean(axis=0)
    spread = np.sqrt(((fitted.transform(train.new) - mean) ** 2).sum(axis=1).mean())
    target = np.sqrt(((train.old - mean) ** 2).sum(axis=1).mean())
    assert spread == pytest.approx(target, rel=1e-4)
    assert float(fitted.module.scale) > 1.0
