"""A few training steps on a tiny folder: loss falls, checkpoints reload, resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from service.errors import ContractError, InvalidInput
from training.backbones.checkpoint import BACKBONE_PREFIX, load_backbone, read_checkpoint
from training.backbones.config import load_train_config
from training.backbones.train import TrainResult, lr_factor, train_backbone
from training.data.record_set import write_record_set

from .conftest import jpeg_bytes, tiny_config


def test_loss_falls_and_checkpoints_are_written(trained_run: TrainResult) -> None:
    losses = trained_run.losses
    assert len(losses) == 6  # 16 images, batch 16, 6 epochs
    assert sum(losses[-2:]) / 2 < 0.7 * losses[0]
    assert trained_run.checkpoint.is_file() and trained_run.backbone.is_file()
    lines = (trained_run.output / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_backbone_file_reloads_to_the_trained_weights(trained_run: TrainResult) -> None:
    model, cfg = load_backbone(trained_run.backbone)
    assert (cfg.arch, cfg.width, cfg.embedding_dim) == ("r18", 8, 64)
    stored = read_checkpoint(trained_run.checkpoint).section(BACKBONE_PREFIX)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, stored[name], rtol=0, atol=0)
    with pytest.raises(InvalidInput, match="not r50"):
        load_backbone(trained_run.backbone, arch="r50")


def test_resume_continues_exactly(tmp_path: Path, face_folder: Path) -> None:
    # Constant lr, flips on: 2 epochs straight == 1 epoch, stop, resume for the 2nd.
    cfg = tiny_config(epochs=2, lr_power=0.0, flip=0.5, batch_size=8)
    straight = train_backbone(data=face_folder, output=tmp_path / "a", config=cfg, progress=False)
    first = cfg.model_copy(update={"epochs": 1})
    train_backbone(data=face_folder, output=tmp_path / "b", config=first, progress=False)
    resumed = train_backbone(data=face_folder, output=tmp_path / "b", config=cfg, progress=False)
    assert resumed.steps == straight.steps == 4
    assert resumed.losses == pytest.approx(straight.losses[2:], rel=1e-5)
    a = read_checkpoint(straight.checkpoint).tensors
    b = read_checkpoint(resumed.checkpoint).tensors
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_trains_from_a_recordio_set(tmp_path: Path, face_samples: list) -> None:
    rec = write_record_set(tmp_path / "rec", [(jpeg_bytes(i), lab) for i, lab in face_samples])
    cfg = tiny_config(epochs=1, batch_size=8)
    result = train_backbone(data=rec, output=tmp_path / "out", config=cfg, progress=False)
    assert (result.num_images, result.num_classes, result.steps) == (16, 4, 2)


def test_config_base_and_override(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("arch: r18\nwidth: 16\nlr: 0.2\nepochs: 3\n")
    (tmp_path / "run.toml").write_text('base = "base.yaml"\narch = "r50"\nlr = 0.01\n')
    cfg = load_train_config(tmp_path / "run.toml", overrides={"epochs": 7, "seed": None})
    assert (cfg.arch, cfg.width, cfg.lr, cfg.epochs, cfg.seed) == ("r50", 16, 0.01, 7, 0)
    assert load_train_config("r50").arch == "r50"  # a built-in config by name
    (tmp_path / "bad.toml").write_text("widht = 3\n")
    with pytest.raises(ContractError, match="widht"):
        load_train_config(tmp_path / "bad.toml")


def test_lr_schedule() -> None:
    assert lr_factor(0, total_steps=10, warmup_steps=2, power=2.0) == 0.5
    assert lr_factor(2, total_steps=10, warmup_steps=2, power=2.0) == 1.0
    assert lr_factor(6, total_steps=10, warmup_steps=2, power=2.0) == pytest.approx(0.25)
    assert lr_factor(10, total_steps=10, warmup_steps=2, power=2.0) == 0.0


def test_user_errors(tmp_path: Path, face_folder: Path) -> None:
    with pytest.raises(InvalidInput, match="not found"):
        train_backbone(data=tmp_path / "nope", output=tmp_path, config=tiny_config())
    with pytest.raises(InvalidInput, match="device must be"):
        train_backbone(data=face_folder, output=tmp_path, config=tiny_config(), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInput, match="CUDA is not available"):
            train_backbone(data=face_folder, output=tmp_path, config=tiny_config(), device="cuda")


@pytest.mark.gpu
def test_a_few_steps_on_cuda(tmp_path: Path, face_folder: Path) -> None:
    cfg = tiny_config(epochs=3)
    result = train_backbone(
        data=face_folder, output=tmp_path, config=cfg, device="cuda", progress=False
    )
    assert result.steps == 3 and result.losses[-1] < result.losses[0]
    model, _ = load_backbone(result.backbone)
    assert next(model.parameters()).device.type == "cpu"


def test_bfloat16_autocast_trains(tmp_path: Path, face_folder: Path) -> None:
    cfg = tiny_config(epochs=4, amp=True)
    result = train_backbone(data=face_folder, output=tmp_path, config=cfg, progress=False)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert result.losses[-1] < result.losses[0]


def test_a_pickle_is_refused_not_loaded(tmp_path: Path) -> None:
    pickled = tmp_path / "weights.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, pickled)
    with pytest.raises(ContractError, match="not a readable safetensors file"):
        read_checkpoint(pickled)
    with pytest.raises(ContractError, match="not found"):
        read_checkpoint(tmp_path / "missing.safetensors")


@pytest.mark.kit
def test_a_few_steps_on_the_kit_aligned_crops(kit_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(epochs=1, max_steps=2, min_images_per_class=20)
    aligned = kit_dir / "lfw" / "aligned"
    result = train_backbone(data=aligned, output=tmp_path, config=cfg, progress=False)
    assert result.num_classes >= 2 and result.steps == 2
    assert all(torch.isfinite(torch.tensor(result.losses)))
