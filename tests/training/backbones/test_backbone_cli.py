"""``facebridge backbone ...`` end to end on the tiny run: train, export, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from service.cli import main
from service.inference.backbone import OnnxBackbone
from training.backbones.checkpoint import load_backbone
from training.backbones.export import _row_cosines
from training.backbones.train import TrainResult


def test_train_command_with_a_yaml_config(
    tmp_path: Path, face_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "base: tiny\nwidth: 4\nembedding_dim: 16\ninput_size: 32\nthreads: 1\nflip: 0.5\n"
    )
    out = tmp_path / "run"
    argv = ["backbone", "train", "--data", str(face_folder), "--output", str(out)]
    argv += ["--config", str(config), "--max-steps", "2", "--batch-size", "8", "--no-progress"]
    assert main(argv) == 0
    assert "2 steps" in capsys.readouterr().out
    _, cfg = load_backbone(out / "backbone.safetensors")
    assert (cfg.width, cfg.embedding_dim, cfg.max_steps) == (4, 16, 2)


def test_export_command_writes_a_model_the_service_loads(
    trained_run: TrainResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_path = tmp_path / "trained.onnx"
    argv = ["backbone", "export", "--checkpoint", str(trained_run.checkpoint)]
    argv += ["--output", str(onnx_path), "--parity-batches", "1,7", "--threads", "1"]
    argv += ["--model-id", "tiny-r18", "--exporter", "legacy"]  # dynamo: test_backbone_export
    assert main(argv) == 0
    printed = capsys.readouterr().out
    manifest = json.loads(onnx_path.with_suffix(".json").read_text())
    assert manifest["sha256"] in printed and manifest["model_id"] == "tiny-r18"

    runner = OnnxBackbone(onnx_path.with_suffix(".json"))
    crops = np.random.default_rng(1).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    model, _ = load_backbone(trained_run.checkpoint)
    x = (crops.astype(np.float32) - 127.5) / 127.5
    with torch.no_grad():
        expected = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    assert _row_cosines(runner.embed(crops), expected).min() >= 0.9999


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["backbone", "init", "--arch", "r7", "--output", "x.onnx"], "unknown arch"),
        (
            ["backbone", "export", "--checkpoint", "missing.safetensors", "--output", "x.onnx"],
            "checkpoint not found",
        ),
        (["backbone", "train", "--data", "no-such-dir", "--output", "out"], "not found"),
        (["backbone", "init", "--output", "x.onnx", "--parity-batches", "1,x"], "parity-batches"),
    ],
)
def test_user_errors_are_one_line(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
