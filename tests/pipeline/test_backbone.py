"""OnnxBackbone: manifest checked against the model on load; output normalised once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.contracts import BackboneManifest
from service.errors import ContractError
from service.inference.backbone import OnnxBackbone
from service.inference.preprocess import preprocess

from .conftest import TinyBackboneFactory
from .onnx_models import build_tiny_backbone


def crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


def naive_preprocess(batch: np.ndarray, manifest: BackboneManifest) -> np.ndarray:
    out = np.empty(batch.shape, np.float32)
    mean = np.broadcast_to(np.asarray(manifest.mean, np.float32), (3,))
    std = np.broadcast_to(np.asarray(manifest.std, np.float32), (3,))
    for c in range(3):
        source = 2 - c if manifest.color == "BGR" else c
        out[..., c] = (batch[..., source].astype(np.float32) - mean[c]) / std[c]
    return out.transpose(0, 3, 1, 2) if manifest.layout == "NCHW" else out


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("color", ["RGB", "BGR"])
def test_preprocess_matches_a_naive_reference(layout: str, color: str) -> None:
    manifest = BackboneManifest(
        model_id="m", file="m.onnx", input_name="x", output_name="y", layout=layout,
        color=color, mean=(120.0, 110.0, 100.0), std=(60.0, 50.0, 40.0), output_dim=8,
    )  # fmt: skip
    batch = crops(3)
    got = preprocess(batch, manifest=manifest)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, naive_preprocess(batch, manifest), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_embed_is_the_models_output_normalised(
    tmp_path: Path, tiny_backbone: TinyBackboneFactory, layout: str
) -> None:
    manifest_path = tiny_backbone(layout=layout, dim=8)
    weight = build_tiny_backbone(tmp_path / "tiny.onnx", layout=layout, dim=8)
    backbone = OnnxBackbone(manifest_path, batch_size=4)
    assert backbone.model_id == "tiny" and backbone.output_dim == 8
    batch = crops(9)
    got = backbone.embed(batch)
    x = (batch.astype(np.float32) - 127.5) / 127.5
    pooled = x.reshape(9, 28, 4, 28, 4, 3).mean(axis=(2, 4)).transpose(0, 3, 1, 2).reshape(9, -1)
    expected = pooled @ weight
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert got.shape == (9, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert backbone.embed(np.empty((0, 112, 112, 3), np.uint8)).shape == (0, 8)


@pytest.mark.parametrize(
    ("manifest", "model", "message"),
    [
        ({"input_name": "img"}, {}, "input_name 'img' is not an input"),
        ({"output_name": "emb"}, {}, "output_name 'emb' is not an output"),
        ({"layout": "NHWC"}, {"layout": "NCHW"}, "manifest says NHWC input"),
        ({"layout": "NCHW"}, {"layout": "NHWC"}, "manifest says NCHW input"),
        ({"input_size": [128, 128]}, {}, "check layout/input_size"),
        ({"output_dim": 512}, {"dim": 8}, "manifest output_dim 512"),
        ({"output_normalized": True}, {}, "output_normalized but probe norms"),
        ({}, {"nan_output": True}, "NaN/inf"),
        ({"file": "missing.onnx"}, {}, "not found beside the manifest"),
        ({"layout": "NCWH"}, {}, "invalid backbone manifest: layout"),
    ],
)
def test_manifest_mismatch_is_one_clear_contract_error(
    tiny_backbone: TinyBackboneFactory, manifest: dict, model: dict, message: str
) -> None:
    with pytest.raises(ContractError, match=message):
        OnnxBackbone(tiny_backbone(manifest=manifest, **model))


def test_a_file_that_is_not_onnx(tmp_path: Path, tiny_backbone: TinyBackboneFactory) -> None:
    manifest_path = tiny_backbone()
    (tmp_path / "tiny.onnx").write_bytes(b"not a model")
    with pytest.raises(ContractError, match="cannot load the backbone"):
        OnnxBackbone(manifest_path)


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_unknown_provider_is_refused(tiny_backbone: TinyBackboneFactory) -> None:
    with pytest.raises(ContractError):
        OnnxBackbone(tiny_backbone(), providers=("NoSuchExecutionProvider",))


@pytest.mark.kit
def test_kit_mobilefacenet_reproduces_the_kit_new_vectors(
    kit_dir: Path, kit_manifest: Path, tmp_path: Path
) -> None:
    from service.inference.images import read_image_file

    backbone = OnnxBackbone(kit_manifest)
    assert backbone.manifest.layout == "NHWC" and backbone.output_dim == 128
    z = np.load(kit_dir / "lfw" / "pairs.npz")
    rows = np.random.default_rng(0).choice(len(z["path"]), 16, replace=False)
    batch = np.stack([read_image_file(kit_dir / "lfw" / "aligned" / z["path"][i]) for i in rows])
    cosine = (backbone.embed(batch) * z["new"][rows]).sum(axis=1)
    assert cosine.min() > 0.9999
    wrong = json.loads(kit_manifest.read_text()) | {
        "layout": "NCHW",
        "file": str((kit_manifest.parent / "mobilefacenet.onnx").resolve()),
    }
    bad = tmp_path / "wrong.json"
    bad.write_text(json.dumps(wrong))
    with pytest.raises(ContractError, match="manifest says NCHW"):
        OnnxBackbone(bad)


class _CountingSession:
    """Wraps an ORT session and records the batch size of every ``run``."""

    def __init__(self, session: object) -> None:
        self._session = session
        self.batches: list[int] = []

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.batches.extend(v.shape[0] for v in feeds.values())
        return self._session.run(output_names, feeds)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._session, name)


@pytest.mark.parametrize(("n", "batch_size", "runs"), [(1, 1, [2]), (3, 8, [6]), (3, 4, [4, 2])])
def test_flip_average_matches_a_naive_reference_in_shared_runs(
    tmp_path: Path, tiny_backbone: TinyBackboneFactory, n: int, batch_size: int, runs: list[int]
) -> None:
    """Each crop and its left-right mirror go through the SAME ORT run (one run for a single
    image); the result is normalise(unit(e(x)) + unit(e(mirror x)))."""
    manifest_path = tiny_backbone(layout="NHWC", dim=8)
    weight = build_tiny_backbone(tmp_path / "tiny.onnx", layout="NHWC", dim=8)
    backbone = OnnxBackbone(manifest_path, batch_size=batch_size)
    counting = _CountingSession(backbone._session)
    backbone._session = counting  # type: ignore[assignment]
    batch = crops(n, seed=5)

    def naive_unit(images: np.ndarray) -> np.ndarray:
        x = (images.astype(np.float32) - 127.5) / 127.5
        pooled = x.reshape(len(images), 28, 4, 28, 4, 3).mean(axis=(2, 4))
        out = pooled.transpose(0, 3, 1, 2).reshape(len(images), -1) @ weight
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    mirrored = batch[:, :, ::-1, :]  # [N, H, W, 3]: mirror along the width axis
    summed = naive_unit(batch) + naive_unit(mirrored)
    expected = summed / np.linalg.norm(summed, axis=1, keepdims=True)
    got = backbone.embed(batch, flip_average=True)
    assert counting.batches == runs
    assert got.shape == (n, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, backbone.embed(batch), atol=1e-3)  # the mirror changes it
    assert backbone.embed(np.empty((0, 112, 112, 3), np.uint8), flip_average=True).shape == (0, 8)
