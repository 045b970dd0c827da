"""Tiny synthetic ONNX models for API tests (no kit, no torch): a backbone and transformers.

The backbone flattens a 112 x 112 x 3 crop and multiplies it by a fixed random matrix, so
different images give different embeddings and the same image the same one. A transformer is a
single MatMul with the facebridge metadata contract; a two-way one adds a second MatMul (the
backward map, ``gallery_old_embedding -> gallery_new_embedding``) and a fusion weight < 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.contracts import (
    TRANSFORMER_GALLERY_INPUT,
    TRANSFORMER_GALLERY_OUTPUT,
    TRANSFORMER_INPUT,
    TRANSFORMER_OUTPUT,
    TransformerMetadata,
)
from service.decision import ScoreCalibration
from service.metadata_fields import encode_vectors

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


def _nan_trap(d_in: int, nan_above: tuple[np.ndarray, float]) -> tuple[list, list]:
    """The forward graph and its extra initializers when the map outputs NaN above a cosine."""
    # out = x @ w + 0 * sqrt(c - x . u): NaN exactly where x . u > c.
    trap, limit = nan_above
    nodes = [
        helper.make_node("MatMul", [TRANSFORMER_INPUT, "w"], ["mapped"]),
        helper.make_node("MatMul", [TRANSFORMER_INPUT, "trap"], ["along"]),
        helper.make_node("Sub", ["limit", "along"], ["room"]),
        helper.make_node("Sqrt", ["room"], ["root"]),
        helper.make_node("Mul", ["root", "zero"], ["nan_or_zero"]),
        helper.make_node("Add", ["mapped", "nan_or_zero"], [TRANSFORMER_OUTPUT]),
    ]
    initializers = [
        numpy_helper.from_array(np.asarray(trap, np.float32).reshape(d_in, 1), "trap"),
        numpy_helper.from_array(np.array([limit], np.float32), "limit"),
        numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
    ]
    return nodes, initializers


def _add_backward_map(
    back: np.ndarray,
    *,
    nodes: list,
    inputs: list,
    outputs: list,
    initializers: list,
    gallery_output: bool,
    gallery_batch: str,
) -> None:
    """Make the graph two-way: the gallery input and (unless off-contract) its mapped output."""
    inputs.append(
        helper.make_tensor_value_info(
            TRANSFORMER_GALLERY_INPUT, TensorProto.FLOAT, [gallery_batch, back.shape[0]]
        )
    )
    initializers.append(numpy_helper.from_array(back, "w_back"))
    if gallery_output:
        nodes.append(
            helper.make_node(
                "MatMul", [TRANSFORMER_GALLERY_INPUT, "w_back"], [TRANSFORMER_GALLERY_OUTPUT]
            )
        )
        outputs.append(
            helper.make_tensor_value_info(
                TRANSFORMER_GALLERY_OUTPUT, TensorProto.FLOAT, [gallery_batch, back.shape[1]]
            )
        )


def write_matrix_transformer(
    path: Path,
    *,
    matrix: np.ndarray,
    source_model: str = TINY_BACKBONE_ID,
    target_model: str = TINY_OLD_MODEL_ID,
    recipe: str = "test-matrix",
    threshold: float | None = 0.5,
    backward: np.ndarray | None = None,
    fusion_weight: float | None = None,
    gallery_output: bool = True,
    gallery_batch: str = "gallery",
    calibrations: tuple[ScoreCalibration, ...] = (),
    extra_props: dict[str, str] | None = None,
    nan_above: tuple[np.ndarray, float] | None = None,
    validation_sample: np.ndarray | None = None,
) -> Path:
    """A transformer ONNX file computing ``new @ matrix`` with facebridge metadata.

    ``backward`` [d_old, d_new] makes it two-way: ``gallery_new_embedding = gallery_old_embedding
    @ backward``, metadata fusion weight ``fusion_weight`` (default 0.9; 1.0 without
    ``backward``). ``gallery_output=False`` / ``gallery_batch="batch"`` / a one-way file with a
    weight < 1 build the off-contract files the contract tests need. ``calibrations``: the
    open-set calibrations to store (none: an "older" file). ``extra_props`` override
    metadata entries. ``nan_above=(u, c)`` makes the forward map output NaN for inputs whose
    cosine with the unit vector ``u`` exceeds ``c`` (a "broken on real faces" transformer);
    ``validation_sample`` is stored as the file's validation sample.
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    d_in, d_out = matrix.shape
    nodes = [helper.make_node("MatMul", [TRANSFORMER_INPUT, "w"], [TRANSFORMER_OUTPUT])]
    inputs = [helper.make_tensor_value_info(TRANSFORMER_INPUT, TensorProto.FLOAT, ["batch", d_in])]
    outputs = [
        helper.make_tensor_value_info(TRANSFORMER_OUTPUT, TensorProto.FLOAT, ["batch", d_out])
    ]
    initializers = [numpy_helper.from_array(matrix, "w")]
    if nan_above is not None:
        nodes, extra = _nan_trap(d_in, nan_above)
        initializers += extra
    if backward is not None:
        _add_backward_map(
            np.asarray(backward, dtype=np.float32),
            nodes=nodes,
            inputs=inputs,
            outputs=outputs,
            initializers=initializers,
            gallery_output=gallery_output,
            gallery_batch=gallery_batch,
        )
    if fusion_weight is None:
        fusion_weight = 0.9 if backward is not None else 1.0
    graph = helper.make_graph(
        nodes, "matrix_transformer", inputs, outputs, initializer=initializers
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
        fusion_weight=fusion_weight,
        calibrations=tuple(calibrations),
        validation_sample=None if validation_sample is None else encode_vectors(validation_sample),
    )
    for key, value in {**meta.to_props(), **(extra_props or {})}.items():
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
