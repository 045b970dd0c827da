"""Two-way transformers: the backward ridge map, the two-head ONNX export and its evaluation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from service.contracts import (
    META_FUSION_WEIGHT,
    TRANSFORMER_GALLERY_INPUT,
    TRANSFORMER_GALLERY_OUTPUT,
    TRANSFORMER_INPUT,
    TRANSFORMER_OUTPUT,
    PairsSet,
    save_pairs,
)
from service.errors import ContractError, InvalidInput
from service.evaluation.protocol import ROW_MAPPED, closed_set_report
from service.inference.transformer import TransformerRunner
from training.transformers.cli import app, evaluate_artefact
from training.transformers.data import normalized_pairs
from training.transformers.export import PARITY_BATCHES, default_metadata, export_transformer
from training.transformers.fit import describe, fit_transformer
from training.transformers.recipes import DEFAULT_RECIPE, get_recipe


def numpy_ridge(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with an unpenalised bias, written out: centre, solve the normal equations."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - xm, y - ym
    weight = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ yc)
    return weight, ym - xm @ weight


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_backward_map_is_ridge_old_to_new_reinflated_around_the_new_mean(
    pairs: PairsSet,
) -> None:
    fitted = fit_transformer(pairs=pairs, recipe="default", progress=False)
    assert fitted.two_way and fitted.fusion_weight == DEFAULT_RECIPE.fusion_weight == 0.9
    x, y = unit(pairs.new), unit(pairs.old)
    weight, bias = numpy_ridge(y, x, lam=DEFAULT_RECIPE.backward_lambda)
    mean = x.mean(axis=0)
    probe = unit(np.random.default_rng(0).standard_normal((11, pairs.old_dim)))
    got = fitted.transform_gallery(probe.astype(np.float32))
    assert got.shape == (11, pairs.new_dim) and got.dtype == np.float32
    want = mean + DEFAULT_RECIPE.backward_scale * (probe @ weight + bias - mean)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # the forward map of the default: plain ridge new -> old, no output scale
    f_weight, f_bias = numpy_ridge(x, y, lam=DEFAULT_RECIPE.ridge_lambda)
    np.testing.assert_allclose(fitted.transform(x[:7]), x[:7] @ f_weight + f_bias, atol=1e-4)
    summary = describe(fitted)
    assert summary["two_way"] is True and summary["fusion_weight"] == 0.9
    assert summary["backward_parameters"] == pairs.old_dim * pairs.new_dim + pairs.new_dim


def test_backward_map_uses_only_the_real_rows(pairs: PairsSet) -> None:
    recipe = get_recipe("two-way-mlp").replace(
        epochs=2, pretrain_epochs=1, hidden=16, interpolation="sorted", interpolation_rate=0.5
    )
    fitted = fit_transformer(pairs=pairs, recipe=recipe, progress=False)
    x, y = unit(pairs.new), unit(pairs.old)
    weight, bias = numpy_ridge(y, x, lam=recipe.backward_lambda)
    mean = x.mean(axis=0)
    want = mean + recipe.backward_scale * (y[:9] @ weight + bias - mean)
    np.testing.assert_allclose(fitted.transform_gallery(y[:9].astype(np.float32)), want, atol=1e-4)


def test_one_way_recipes_have_no_backward_map(pairs: PairsSet) -> None:
    fitted = fit_transformer(pairs=pairs, recipe="ridge", progress=False)
    assert not fitted.two_way and fitted.backward is None and fitted.fusion_weight == 1.0
    with pytest.raises(InvalidInput, match="no backward map"):
        fitted.transform_gallery(np.zeros((1, pairs.old_dim), np.float32))
    with pytest.raises(InvalidInput, match="old-model vectors"):
        fit_transformer(pairs=pairs, recipe="default", progress=False).transform_gallery(
            np.zeros((2, pairs.new_dim + 1), np.float32)
        )


def _ort_heads(path: Path, new: np.ndarray, gallery_old: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {
        TRANSFORMER_INPUT: np.ascontiguousarray(new, np.float32),
        TRANSFORMER_GALLERY_INPUT: np.ascontiguousarray(gallery_old, np.float32),
    }
    return session.run([TRANSFORMER_OUTPUT, TRANSFORMER_GALLERY_OUTPUT], feeds)


def test_two_way_export_has_both_heads_parity_and_metadata(pairs: PairsSet, tmp_path: Path) -> None:
    fitted = fit_transformer(pairs=pairs, recipe="default", progress=False)
    meta = default_metadata(fitted, source_model="new-m", target_model="old-m", threshold=0.5)
    assert meta.fusion_weight == 0.9 and meta.two_way
    out = tmp_path / "two-way.onnx"
    report = export_transformer(fitted, out, metadata=meta)
    for parity in (report.parity, report.parity_backward):
        assert set(parity) == set(PARITY_BATCHES) and min(parity.values()) >= 0.9999
    assert report.to_dict()["metadata"][META_FUSION_WEIGHT] == "0.9"

    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == [TRANSFORMER_INPUT, TRANSFORMER_GALLERY_INPUT]
    assert [o.name for o in model.graph.output] == [TRANSFORMER_OUTPUT, TRANSFORMER_GALLERY_OUTPUT]
    batch_dims = [i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input]
    assert all(batch_dims) and batch_dims[0] != batch_dims[1]  # symbolic and independent
    props = {p.key: p.value for p in model.metadata_props}
    assert float(props[META_FUSION_WEIGHT]) == 0.9

    # Both heads at once, different batch sizes, and each head with a zero-row other input.
    x = unit(normalized_pairs(pairs).new[:5]).astype(np.float32)
    g = unit(normalized_pairs(pairs).old[:9]).astype(np.float32)
    forward, backward = _ort_heads(out, x, g)
    np.testing.assert_allclose(forward, fitted.transform(x), atol=1e-4)
    np.testing.assert_allclose(backward, fitted.transform_gallery(g), atol=1e-4)
    only_forward, empty = _ort_heads(out, x, np.zeros((0, pairs.old_dim), np.float32))
    assert empty.shape == (0, pairs.new_dim)
    np.testing.assert_allclose(only_forward, forward, atol=1e-6)

    runner = TransformerRunner(out)
    assert runner.two_way and runner.fusion_weight == 0.9
    np.testing.assert_allclose(runner.map_gallery(g), unit(backward), atol=1e-5)


def test_backward_parity_failure_fails_the_export(
    pairs: PairsSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fitted = fit_transformer(pairs=pairs, recipe="default", progress=False)
    meta = default_metadata(fitted, source_model="a", target_model="b")
    right = fitted.transform_gallery
    monkeypatch.setattr(fitted, "transform_gallery", lambda old: -right(old))
    with pytest.raises(ContractError, match="backward head"):
        export_transformer(fitted, tmp_path / "bad.onnx", metadata=meta)
    assert not (tmp_path / "bad.onnx").exists()
    one_way = dataclasses.replace(meta, fusion_weight=1.0)
    with pytest.raises(ContractError, match="fusion_weight"):
        export_transformer(fitted, tmp_path / "bad.onnx", metadata=one_way)


def test_one_way_export_keeps_the_one_way_contract(pairs: PairsSet, tmp_path: Path) -> None:
    fitted = fit_transformer(pairs=pairs, recipe="ridge", progress=False)
    report = export_transformer(
        fitted, tmp_path / "r.onnx", metadata=default_metadata(fitted, source_model="a",
                                                               target_model="b")
    )  # fmt: skip
    model = onnx.load(str(report.path))
    assert [i.name for i in model.graph.input] == [TRANSFORMER_INPUT]
    assert [o.name for o in model.graph.output] == [TRANSFORMER_OUTPUT]
    assert META_FUSION_WEIGHT not in {p.key for p in model.metadata_props}
    assert report.parity_backward == {} and "parity_backward_min_cosine" not in report.to_dict()


def test_cli_two_way_threshold_is_the_fused_one_and_no_flip_is_honoured(
    pairs: PairsSet, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    flipped = dataclasses.replace(
        pairs, new_flip=(pairs.new + 0.3 * rng.standard_normal(pairs.new.shape)).astype("f4")
    )
    pairs_file = save_pairs(tmp_path / "pairs.npz", flipped)
    out = tmp_path / "d.onnx"
    runner = CliRunner()
    args = ["fit", "--pairs", str(pairs_file), "--output", str(out), "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "flip-averaged queries, two-way fused, w=0.9" in result.output
    meta = TransformerRunner(out).metadata
    bridge = flipped.select_split("bridge")
    fitted = fit_transformer(pairs=bridge, recipe="default", progress=False)
    fused = closed_set_report(fit_pairs=bridge, mapped=fitted.map_rows(bridge))
    forward_only = closed_set_report(
        fit_pairs=bridge, mapped=fitted.transform(normalized_pairs(bridge).new)
    )
    assert meta.threshold == pytest.approx(fused.row(ROW_MAPPED).threshold_at_far_1e3)
    assert meta.threshold != pytest.approx(forward_only.row(ROW_MAPPED).threshold_at_far_1e3)

    reports = {}
    for extra in ([], ["--no-flip"]):
        result = runner.invoke(
            app, ["evaluate", "--pairs", str(pairs_file), "--transformer", str(out), "--json",
                  *extra]
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        reports[bool(extra)] = json.loads(result.output)
    assert reports[False]["mapped_queries"] == "flip-averaged"
    assert reports[True]["mapped_queries"] == "plain"
    assert reports[False]["mapped_scoring"] == "two-way fused, w=0.9"
    assert meta.metrics["eval_top1"] == pytest.approx(
        reports[False]["rows"]["mapped"]["top1"], abs=0.01
    )
    plain = evaluate_artefact(
        pairs_path=pairs_file, transformer_path=out, all_rows=False, flip=False
    )
    assert plain.row(ROW_MAPPED).top1 == reports[True]["rows"]["mapped"]["top1"]
