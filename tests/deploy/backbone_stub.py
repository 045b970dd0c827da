"""A tiny stand-in backbone for deployment tests (no weights, no torch, milliseconds)."""

from __future__ import annotations

import json
from pathlib import Path


def write_stand_in_backbone(manifest_path: Path) -> None:
    """A backbone manifest + ONNX without weights (what the operator puts in the models volume):
    per-channel mean and mean square of 16 image tiles (NCHW), 96-d."""
    import onnx
    from onnx import TensorProto, helper

    pooled = helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[28, 28], strides=[28, 28])
    graph = helper.make_graph(
        [
            pooled,
            helper.make_node("Mul", ["x", "x"], ["xx"]),
            helper.make_node("AveragePool", ["xx"], ["q"], kernel_shape=[28, 28], strides=[28, 28]),
            helper.make_node("Concat", ["p", "q"], ["c"], axis=1),
            helper.make_node("Flatten", ["c"], ["embedding"], axis=1),
        ],
        "deploy_test_backbone",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 96])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, manifest_path.with_suffix(".onnx"))
    manifest = {
        "model_id": "deploy-test-tiles-96",
        "file": manifest_path.with_suffix(".onnx").name,
        "input_name": "x",
        "output_name": "embedding",
        "layout": "NCHW",
        "output_dim": 96,
    }
    manifest_path.write_text(json.dumps(manifest))
