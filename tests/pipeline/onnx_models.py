"""Tiny ONNX backbones built with the onnx helper API (for the pipeline tests)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TinyBackboneFactory = Callable[..., Path]


def build_tiny_backbone(
    path: Path,
    *,
    layout: str = "NCHW",
    dim: int = 8,
    seed: int = 0,
    normalized: bool = False,
    nan_output: bool = False,
    input_name: str = "input",
    output_name: str = "embedding",
) -> np.ndarray:
    """A 112x112 "backbone": 4x4 average pooling, flatten, a random linear map to ``dim``.

    Returns the weight matrix so tests can compute the expected output with NumPy.
    """
    rng = np.random.default_rng(seed)
    features = 3 * 28 * 28
    weight = (rng.standard_normal((features, dim)) / np.sqrt(features)).astype(np.float32)
    nodes = []
    source = input_name
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [source], ["nchw"], perm=[0, 3, 1, 2]))
        source = "nchw"
    nodes += [
        helper.make_node("AveragePool", [source], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weight"], ["linear"]),
    ]
    last = "linear"
    if nan_output:
        # sqrt(-|x|) is NaN for every non-zero feature.
        nodes += [
            helper.make_node("Abs", ["linear"], ["linear_abs"]),
            helper.make_node("Neg", ["linear_abs"], ["minus"]),
            helper.make_node("Sqrt", ["minus"], ["nan"]),
        ]
        last = "nan"
    if normalized:
        nodes.append(helper.make_node("LpNormalization", [last], ["normed"], axis=1, p=2))
        last = "normed"
    nodes.append(helper.make_node("Identity", [last], [output_name]))
    in_shape = ["batch", 3, 112, 112] if layout == "NCHW" else ["batch", 112, 112, 3]
    graph = helper.make_graph(
        nodes,
        "tiny_backbone",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", dim])],
        initializer=[numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return weight


def write_tiny_backbone(
    directory: Path, name: str = "tiny", manifest: dict | None = None, **model: object
) -> Path:
    """A tiny ONNX + its manifest in ``directory``; returns the manifest path.

    ``model`` options go to :func:`build_tiny_backbone`; ``manifest`` overrides manifest fields.
    """
    onnx_path = directory / f"{name}.onnx"
    build_tiny_backbone(onnx_path, **model)  # type: ignore[arg-type]
    fields = {
        "model_id": name,
        "file": onnx_path.name,
        "input_name": model.get("input_name", "input"),
        "output_name": model.get("output_name", "embedding"),
        "layout": model.get("layout", "NCHW"),
        "input_size": [112, 112],
        "color": "RGB",
        "mean": 127.5,
        "std": 127.5,
        "output_dim": model.get("dim", 8),
        "output_normalized": bool(model.get("normalized", False)),
    }
    fields.update(manifest or {})
    manifest_path = directory / f"{name}.json"
    manifest_path.write_text(json.dumps(fields))
    return manifest_path
