"""ONNX export: a single validated file, manifest per contract 3, parity by cosine, loadable."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.contracts import load_backbone_manifest
from service.errors import ContractError, InvalidInput
from service.inference.backbone import OnnxBackbone
from training.backbones.config import TrainConfig
from training.backbones.export import (
    BackboneExportReport,
    _row_cosines,
    export_random_backbone,
)


@pytest.fixture(scope="module")
def random_export(tmp_path_factory: pytest.TempPathFactory) -> BackboneExportReport:
    cfg = TrainConfig(arch="r18", width=4, embedding_dim=32)
    path = tmp_path_factory.mktemp("export") / "r18.onnx"
    return export_random_backbone(path, config=cfg, seed=3, parity_batches=(1, 7, 256))


def test_manifest_follows_contract_3(random_export: BackboneExportReport) -> None:
    manifest, onnx_path = load_backbone_manifest(random_export.manifest_path)
    assert onnx_path == random_export.onnx_path.resolve()
    assert manifest.model_dump() == {
        "model_id": "iresnet-r18-random-seed3",
        "file": "r18.onnx",
        "input_name": "input",
        "output_name": "embedding",
        "layout": "NCHW",
        "input_size": (112, 112),
        "color": "RGB",
        "mean": 127.5,
        "std": 127.5,
        "output_dim": 32,
        "output_normalized": False,
        "alignment": "arcface-5pt-112",
    }
    body = json.loads(random_export.manifest_path.read_text())
    digest = hashlib.sha256(random_export.onnx_path.read_bytes()).hexdigest()
    assert body["sha256"] == random_export.sha256 == digest


def test_single_file_with_symbolic_batch(random_export: BackboneExportReport) -> None:
    folder = random_export.onnx_path.parent
    assert sorted(p.name for p in folder.iterdir()) == ["r18.json", "r18.onnx"]
    model = onnx.load(str(random_export.onnx_path))
    (inp,) = model.graph.input
    assert inp.type.tensor_type.shape.dim[0].dim_param
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [3, 112, 112]


def test_parity_at_batches_1_7_256(random_export: BackboneExportReport) -> None:
    assert sorted(random_export.parity) == [1, 7, 256]
    assert min(random_export.parity.values()) >= 0.9999


def test_loads_in_the_service_backbone_runner(random_export: BackboneExportReport) -> None:
    runner = OnnxBackbone(random_export.manifest_path)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(3, 112, 112, 3), dtype=np.uint8)
    vectors = runner.embed(crops)
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert runner.model_id == "iresnet-r18-random-seed3"


def test_bad_output_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"\.onnx"):
        export_random_backbone(tmp_path / "model.bin", config=TrainConfig(width=4))


def test_row_cosines_reference() -> None:
    a = np.array([[1.0, 0.0], [3.0, 4.0]], np.float32)
    b = np.array([[2.0, 0.0], [-3.0, -4.0]], np.float32)
    np.testing.assert_allclose(_row_cosines(a, b), [1.0, -1.0])


def test_r50_with_the_legacy_exporter(tmp_path: Path) -> None:
    # r18 + dynamo is the fixture above; the CLI test exports r18 with the legacy exporter.
    cfg = TrainConfig(arch="r50", width=4, embedding_dim=16, input_size=32)
    report = export_random_backbone(
        tmp_path / "legacy.onnx", config=cfg, parity_batches=(1, 7, 32), exporter="legacy"
    )
    assert min(report.parity.values()) >= 0.9999
    assert OnnxBackbone(report.manifest_path).output_dim == 16
    with pytest.raises(InvalidInput, match="exporter"):
        export_random_backbone(tmp_path / "x.onnx", config=cfg, exporter="tf")  # type: ignore[arg-type]


def test_a_failed_check_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.backbones.export as export_module

    monkeypatch.setattr(export_module, "MIN_COSINE", 1.5)  # no export can pass this
    cfg = TrainConfig(arch="r18", width=4, embedding_dim=16, input_size=32)
    with pytest.raises(ContractError, match="cosine"):
        export_random_backbone(
            tmp_path / "m.onnx", config=cfg, parity_batches=(1,), exporter="legacy"
        )
    assert list(tmp_path.iterdir()) == []
