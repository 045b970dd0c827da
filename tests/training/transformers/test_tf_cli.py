"""``facebridge transformer fit|evaluate`` end to end on a small synthetic pairs file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import main
from service.contracts import PairsSet, save_pairs
from service.errors import FacebridgeError
from service.inference.transformer import TransformerRunner
from training.transformers.cli import app


def test_fit_uses_bridge_rows_embeds_eval_metrics_and_evaluate_reads_the_file(
    pairs: PairsSet, tmp_path: Path
) -> None:
    pairs_file = save_pairs(tmp_path / "pairs.npz", pairs)
    out = tmp_path / "t.onnx"
    config = tmp_path / "quick.toml"
    config.write_text('base = "study-fc"\nname = "quick-fc"\nepochs = 3\n')
    cli = CliRunner()
    fit_args = ["fit", "--pairs", str(pairs_file), "--output", str(out), "--config", str(config)]
    result = cli.invoke(app, [*fit_args, "--no-progress", "--source-model", "m-new"])
    assert result.exit_code == 0, result.output
    n_bridge = int((pairs.split == "bridge").sum())
    assert f"on {n_bridge} rows" in result.output
    runner = TransformerRunner(out)
    meta = runner.metadata
    assert (meta.recipe, meta.source_model, meta.target_model) == (
        "quick-fc",
        "m-new",
        "dlib-resnet-v1",
    )
    assert meta.threshold is not None and -1.0 <= meta.threshold <= 1.0
    assert {"eval_top1", "eval_top5", "eval_tar_at_far_1e3", "eval_fnir_at_fpir_1e2"} <= set(
        meta.metrics
    )
    # plain queries only (the pairs carry no new_flip): the mapped score's and the native one's
    calibration, native = meta.calibrations
    assert native.score_kind == "native" and native.space == meta.source_model
    assert native.n_impostor == n_bridge * (n_bridge // 5 - 1)
    assert calibration.score_kind == "forward" and calibration.queries == "plain"
    assert "5-fold cross-fitted" in calibration.source
    assert calibration.n_impostor == n_bridge * (n_bridge // 5 - 1)  # 5 images per identity
    assert meta.calibration_for(queries="flip-averaged") is calibration
    assert out.with_name("t.onnx.sha256").read_text().split()[0] == runner.sha256

    result = cli.invoke(
        app, ["evaluate", "--pairs", str(pairs_file), "--transformer", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["rows"]["mapped"]["top1"] == pytest.approx(meta.metrics["eval_top1"], abs=0.01)
    open_set = report["open_set"]
    assert set(open_set["fnir_at_fpir"]) == {"old/old", "new/new", "mapped"}
    assert open_set["service_rule"]["target_fpir"] == 0.01
    det = tmp_path / "det.png"
    result = cli.invoke(
        app,
        ["evaluate", "--pairs", str(pairs_file), "--transformer", str(out), "--det-plot", str(det)],
    )
    assert result.exit_code == 0, result.output
    assert "FNIR@FPIR=1%" in result.output and "Service default rule" in result.output
    assert det.read_bytes()[:4] == b"\x89PNG"


def test_user_errors_are_one_line(pairs: PairsSet, tmp_path: Path, capsys) -> None:
    pairs_file = save_pairs(tmp_path / "pairs.npz", pairs)
    code = main(
        ["transformer", "fit", "--pairs", str(pairs_file), "--output", str(tmp_path / "x.onnx"),
         "--recipe", "nope"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "unknown recipe 'nope'" in err
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"junk")
    with pytest.raises(FacebridgeError, match="not a valid ONNX"):
        CliRunner().invoke(
            app,
            ["evaluate", "--pairs", str(pairs_file), "--transformer", str(garbage)],
            catch_exceptions=False,
        )
