"""TransformerRunner: the service-side runner refuses anything off-contract, in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.contracts import TransformerMetadata
from service.errors import ContractError
from service.files import file_sha256
from service.inference.transformer import TransformerRunner


def _matmul_model(
    path: Path,
    *,
    d_in: int = 4,
    d_out: int = 3,
    meta_dims: tuple[int, int] | None = None,
    input_name: str = "new_embedding",
    batch: str | int = "batch",
    props: dict[str, str] | None = None,
) -> np.ndarray:
    weight = np.random.default_rng(0).standard_normal((d_in, d_out)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "W"], ["old_embedding"])],
        "t",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, d_in])],
        [helper.make_tensor_value_info("old_embedding", TensorProto.FLOAT, [batch, d_out])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    m_in, m_out = meta_dims or (d_in, d_out)
    meta = TransformerMetadata(
        input_dim=m_in,
        output_dim=m_out,
        source_model="new-model",
        target_model="old-model",
        recipe="test",
        created_at="2026-01-01T00:00:00+00:00",
        threshold=0.5,
    )
    helper.set_model_props(model, meta.to_props() if props is None else props)
    onnx.save(model, str(path))
    return weight


def test_valid_file_loads_maps_and_normalises(tmp_path: Path) -> None:
    path = tmp_path / "t.onnx"
    weight = _matmul_model(path)
    runner = TransformerRunner(path)
    assert (runner.input_dim, runner.output_dim) == (4, 3)
    assert runner.metadata.source_model == "new-model" and runner.metadata.threshold == 0.5
    assert runner.sha256 == file_sha256(path)
    x = np.random.default_rng(1).standard_normal((5, 4))
    raw = runner.map_raw(x)
    np.testing.assert_allclose(raw, x.astype(np.float32) @ weight, rtol=1e-5, atol=1e-5)
    mapped = runner.map(x)
    np.testing.assert_allclose(np.linalg.norm(mapped, axis=1), 1.0, atol=1e-6)
    assert runner.map(np.zeros((0, 4))).shape == (0, 3)


def test_garbage_bytes_are_a_contract_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x00not an onnx file" * 64)
    with pytest.raises(ContractError, match="not a valid ONNX model"):
        TransformerRunner(path)


def test_missing_file_is_a_contract_error(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="not found"):
        TransformerRunner(tmp_path / "absent.onnx")


def test_metadata_dims_must_match_the_graph(tmp_path: Path) -> None:
    path = tmp_path / "wrong.onnx"
    _matmul_model(path, meta_dims=(5, 3))
    with pytest.raises(ContractError, match="metadata says 5 -> 3 but the graph maps 4 -> 3"):
        TransformerRunner(path)


def test_missing_metadata_is_a_contract_error(tmp_path: Path) -> None:
    path = tmp_path / "bare.onnx"
    _matmul_model(path, props={})
    with pytest.raises(ContractError, match="metadata_props lacks"):
        TransformerRunner(path)


def test_wrong_input_name_and_static_batch_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "name.onnx"
    _matmul_model(path, input_name="embedding")
    with pytest.raises(ContractError, match="new_embedding"):
        TransformerRunner(path)
    _matmul_model(path, batch=8)
    with pytest.raises(ContractError, match="dynamic batch"):
        TransformerRunner(path)


def test_wrong_input_width_is_refused_at_map(tmp_path: Path) -> None:
    path = tmp_path / "t.onnx"
    _matmul_model(path)
    with pytest.raises(ContractError, match="expected dimension 4"):
        TransformerRunner(path).map(np.zeros((2, 5), np.float32))
