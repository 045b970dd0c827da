"""Tiny synthetic ONNX models for API tests (no kit, no torch): a backbone and transformers.

The backbone flattens a 112 x 112 x 3 crop and multiplies it by a fixed random matrix, so
different images give different embeddings and the same image the same one. A transformer is a
single MatMul with the facebridge metadata contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.contracts import TRANSFORMER_INPUT, TRANSFORMER_OUTPUT, TransformerMetadata

TINY_BACKBONE_ID = "tiny-backbone-16"
TINY_OLD_MODEL_ID = "tiny-old-16"
TINY_DIM = 16
_OPSET = [helper.make_opsetid("", 17)]
_IR_VERSION = 9


def write_tiny_backbone(directory: Path, *, seed: int = 0, dim: int = TINY_DIM) -> Path:
    """Write ``tiny.onnx`` + ``tiny.json`` (manifest) into ``directory``; returns the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    flat = 112 * 112 * 3
    weights = (rng.standard_normal((flat, dim)) / np.sqrt(flat)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["img", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["emb"]),
        ],
        "tiny_backbone",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 112, 112, 3])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", dim])],
        initializer=[
            numpy_helper.from_array(np.array([-1, flat], dtype=np.int64), "shape"),
            numpy_helper.from_array(weights, "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=_OPSET)
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    onnx.save_model(model, directory / "tiny.onnx")
    manifest = {
        "model_id": TINY_BACKBONE_ID,
        "file": "tiny.onnx",
        "input_name": "img",
        "output_name": "emb",
        "layout": "NHWC",
        "input_size": [112, 112],
        "color": "RGB",
        "mean": 127.5,
        "std": 128.0,
        "output_dim": dim,
        "output_normalized": False,
    }
    path = directory / "tiny.json"
    path.write_text(json.dumps(manifest))
    return path


def write_matrix_transformer(
    path: Path,
    *,
    matrix: np.ndarray,
    source_model: str = TINY_BACKBONE_ID,
    target_model: str = TINY_OLD_MODEL_ID,
    recipe: str = "test-matrix",
    threshold: float | None = 0.5,
) -> Path:
    """A transformer ONNX file computing ``new @ matrix`` with valid facebridge metadata."""
    matrix = np.asarray(matrix, dtype=np.float32)
    d_in, d_out = matrix.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", [TRANSFORMER_INPUT, "w"], [TRANSFORMER_OUTPUT])],
        "matrix_transformer",
        [helper.make_tensor_value_info(TRANSFORMER_INPUT, TensorProto.FLOAT, ["batch", d_in])],
        [helper.make_tensor_value_info(TRANSFORMER_OUTPUT, TensorProto.FLOAT, ["batch", d_out])],
        initializer=[numpy_helper.from_array(matrix, "w")],
    )
    model = helper.make_model(graph, opset_imports=_OPSET)
    model.ir_version = _IR_VERSION
    meta = TransformerMetadata(
        input_dim=d_in,
        output_dim=d_out,
        source_model=source_model,
        target_model=target_model,
        recipe=recipe,
        created_at="2026-01-01T00:00:00Z",
        threshold=threshold,
    )
    for key, value in meta.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, path)
    return path


def random_rotation(dim: int, *, seed: int) -> np.ndarray:
    """A random orthogonal matrix (a transformer that keeps every cosine)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q.astype(np.float32)


def png_bytes(seed: int, *, size: int = 112) -> bytes:
    """A random-noise RGB PNG: a distinct 'aligned crop' per seed."""
    import io

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
