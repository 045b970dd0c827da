"""Fit -> export -> ORT parity on small synthetic data (seconds)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from service.contracts import (
    TRANSFORMER_GALLERY_INPUT,
    TRANSFORMER_INPUT,
    TRANSFORMER_OUTPUT,
    PairsSet,
)
from service.errors import ContractError, InvalidInput
from service.inference.transformer import TransformerRunner
from training.transformers.data import normalized_pairs
from training.transformers.export import PARITY_BATCHES, default_metadata, export_transformer
from training.transformers.fit import fit_transformer
from training.transformers.recipes import get_recipe


def _quick(name: str, **overrides):
    return get_recipe(name).replace(epochs=3, pretrain_epochs=2, hidden=32, channels=4, **overrides)


@pytest.mark.parametrize(
    "name",
    ["ridge", "procrustes", "study-fc", "mlp", "msresnet", "rbt", "mlp-scaled", "default"],
)
def test_fit_export_parity_and_contract(name: str, pairs: PairsSet, tmp_path: Path) -> None:
    fitted = fit_transformer(pairs=pairs, recipe=_quick(name), progress=False)
    out = tmp_path / f"{name}.onnx"
    meta = default_metadata(fitted, source_model="new-m", target_model="old-m", threshold=0.3)
    report = export_transformer(fitted, out, metadata=meta)

    assert set(report.parity) == set(PARITY_BATCHES)
    assert min(report.parity.values()) >= 0.9999
    assert report.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert report.sha256_path.read_text().split()[0] == report.sha256
    model = onnx.load(str(out))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    two_way = [TRANSFORMER_GALLERY_INPUT] if fitted.two_way else []  # default: test_tf_two_way
    assert [i.name for i in model.graph.input] == [TRANSFORMER_INPUT, *two_way]
    assert model.graph.output[0].name == TRANSFORMER_OUTPUT
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch

    runner = TransformerRunner(out)
    assert runner.metadata.recipe == fitted.recipe.name
    assert (runner.input_dim, runner.output_dim) == (pairs.new_dim, pairs.old_dim)
    x = normalized_pairs(pairs).new[:9]
    ref = fitted.transform(x)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(runner.map(x), ref, atol=1e-4)


def test_identity_exports_when_dims_are_equal(make_pairs, tmp_path: Path) -> None:
    pairs = make_pairs(d_new=8, d_old=8)
    fitted = fit_transformer(pairs=pairs, recipe="identity", progress=False)
    report = export_transformer(
        fitted,
        tmp_path / "id.onnx",
        metadata=default_metadata(fitted, source_model="a", target_model="b"),
    )
    x = normalized_pairs(pairs).new[:4]
    np.testing.assert_allclose(TransformerRunner(report.path).map(x), x, atol=1e-6)


def test_export_refuses_metadata_with_other_dims(pairs: PairsSet, tmp_path: Path) -> None:
    fitted = fit_transformer(pairs=pairs, recipe="ridge", progress=False)
    meta = default_metadata(fitted, source_model="a", target_model="b")
    bad = type(meta)(**{**meta.__dict__, "output_dim": meta.output_dim + 1})
    with pytest.raises(ContractError, match="do not match"):
        export_transformer(fitted, tmp_path / "x.onnx", metadata=bad)
    assert not (tmp_path / "x.onnx").exists()


def test_learned_fit_is_reproducible_and_learns(pairs: PairsSet) -> None:
    recipe = _quick("study-fc").replace(epochs=15, lr=1e-2)
    a = fit_transformer(pairs=pairs, recipe=recipe, seed=3, progress=False)
    b = fit_transformer(pairs=pairs, recipe=recipe, seed=3, progress=False)
    c = fit_transformer(pairs=pairs, recipe=recipe, seed=4, progress=False)
    x = normalized_pairs(pairs).new
    np.testing.assert_array_equal(a.transform(x), b.transform(x))
    assert not np.array_equal(a.transform(x), c.transform(x))
    assert a.history[-1]["total"] < a.history[0]["total"]


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "interpolation": "sorted",
            "interpolation_rate": 0.25,
            "interpolation_schedule": "pretrain",
        },
        {"interpolation": "proximity", "interpolation_rate": 0.5},
        {"interpolation": "linear", "interpolation_rate": 0.12},
        {
            "id_weight": 0.5,
            "contrast_weight": 0.2,
            "balance": 1.0,
            "ema": 0.9,
            "input_noise": 0.01,
            "dropout": 0.1,
        },
    ],
)
def test_schedules_and_options_run(pairs: PairsSet, overrides: dict) -> None:
    recipe = _quick("mlp", **overrides)
    fitted = fit_transformer(pairs=pairs, recipe=recipe, progress=False)
    stages = [h["stage"] for h in fitted.history]
    if overrides.get("interpolation_schedule") == "pretrain":
        assert stages == ["pretrain"] * 2 + ["real"] * 3
    elif "interpolation" in overrides:
        assert stages == ["mixed"] * 3
    else:
        assert stages == ["real"] * 3 and {"id", "contrast"} <= set(fitted.history[0])
    assert np.isfinite(fitted.transform(normalized_pairs(pairs).new)).all()


@pytest.mark.gpu
def test_fit_on_cuda_exports_with_cpu_parity(pairs: PairsSet, tmp_path: Path) -> None:
    fitted = fit_transformer(pairs=pairs, recipe=_quick("default"), device="cuda", progress=False)
    meta = default_metadata(fitted, source_model="a", target_model="b")
    report = export_transformer(fitted, tmp_path / "gpu.onnx", metadata=meta)
    assert min(report.parity.values()) >= 0.9999
    assert fitted.device.startswith("cuda")


def test_cuda_requested_without_cuda_is_a_clear_error(pairs: PairsSet) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(InvalidInput, match="CUDA is not available"):
        fit_transformer(pairs=pairs, recipe="ridge", device="cuda", progress=False)
