"""Helpers shared by the service storage tests (imported by name: tests/service is on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from service.contracts import TransformerMetadata

OLD_MODEL = "old-model"
NEW_MODEL = "new-model"
OLD_DIM = 8
NEW_DIM = 6


def make_transformer_onnx(
    *,
    input_dim: int = NEW_DIM,
    output_dim: int = OLD_DIM,
    source_model: str = NEW_MODEL,
    target_model: str = OLD_MODEL,
    threshold: float | None = 0.4,
    weight: np.ndarray | None = None,
    seed: int = 0,
    recipe: str = "test-matmul",
    metrics: dict[str, float] | None = None,
    calibrations: tuple = (),  # type: ignore[type-arg]
) -> bytes:
    """A transformer artefact: one MatMul [batch, in] x [in, out], with facebridge metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if weight is None:
        weight = np.random.default_rng(seed).standard_normal((input_dim, output_dim))
    weight = np.asarray(weight, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["new_embedding", "W"], ["old_embedding"])],
        "transformer",
        [helper.make_tensor_value_info("new_embedding", TensorProto.FLOAT, ["batch", input_dim])],
        [helper.make_tensor_value_info("old_embedding", TensorProto.FLOAT, ["batch", output_dim])],
        initializer=[numpy_helper.from_array(weight, name="W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = TransformerMetadata(
        input_dim=input_dim,
        output_dim=output_dim,
        source_model=source_model,
        target_model=target_model,
        recipe=recipe,
        created_at="2026-01-01T00:00:00Z",
        threshold=threshold,
        metrics={"top1": 90.0} if metrics is None else metrics,
        calibrations=tuple(calibrations),
    )
    helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_backbone_manifest(
    directory: Path, *, model_id: str = NEW_MODEL, dim: int = NEW_DIM
) -> Path:
    """A manifest the registry reads for the backbone's id and output dim (no ONNX session)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "backbone.onnx").write_bytes(b"not used by the registry checks")
    manifest = {
        "model_id": model_id,
        "file": "backbone.onnx",
        "input_name": "img",
        "output_name": "emb",
        "layout": "NHWC",
        "output_dim": dim,
        "output_normalized": True,
    }
    path = directory / "backbone.json"
    path.write_text(json.dumps(manifest))
    return path


def unit_vectors(n: int, dim: int, *, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
