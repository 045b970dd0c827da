"""The next upgrade: a third backbone (a random orthogonal rotation plus noise of the model-2
output, its own ONNX file and manifest) arrives while the gallery holds old-space identities
and model-2-native identities; transformers keyed by (source, target) space, chained, let a
model-3 query reach both (real ONNX Runtime, real FAISS)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.decision import SCORE_FORWARD, fit_calibration
from service.gallery.engines.faiss import FaissStore
from service.inference.backbone import OnnxBackbone
from service.inference.transformer import TransformerRunner
from service.migration.chain import SpaceMap, TransformerChain, identify_across

M2, M3, OLD = "tiny-backbone-16", "tiny-rotated-3", "tiny-old-16"
DIM = 16
FLAT = 112 * 112 * 3


def _tiny_backbone(directory: Path, *, model_id: str, rotation: np.ndarray | None, noise: float):
    """flat(img) @ W [@ R + noise * flat(img) @ W']: model 2 (rotation None) or model 3."""
    rng = np.random.default_rng(0)  # the same W for both: model 3 derives from model 2
    w = (rng.standard_normal((FLAT, DIM)) / np.sqrt(FLAT)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["img", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["emb2" if rotation is not None else "emb"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1, FLAT], dtype=np.int64), "shape"),
        numpy_helper.from_array(w, "w"),
    ]
    if rotation is not None:
        w_noise = (np.random.default_rng(7).standard_normal((FLAT, DIM)) / np.sqrt(FLAT)) * noise
        nodes += [
            helper.make_node("MatMul", ["emb2", "r"], ["rotated"]),
            helper.make_node("MatMul", ["flat", "wn"], ["jitter"]),
            helper.make_node("Add", ["rotated", "jitter"], ["emb"]),
        ]
        inits += [
            numpy_helper.from_array(rotation.astype(np.float32), "r"),
            numpy_helper.from_array(w_noise.astype(np.float32), "wn"),
        ]
    graph = helper.make_graph(
        nodes,
        model_id,
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 112, 112, 3])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", DIM])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, directory / "model.onnx")
    manifest = {
        "model_id": model_id,
        "file": "model.onnx",
        "input_name": "img",
        "output_name": "emb",
        "layout": "NHWC",
        "mean": 127.5,
        "std": 128.0,
        "output_dim": DIM,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return OnnxBackbone(directory / "manifest.json")


def _images(seeds, blend=None):  # type: ignore[no-untyped-def]
    out = []
    for s in seeds:
        img = np.random.default_rng(s).integers(0, 256, (112, 112, 3)).astype(np.float64)
        if blend is not None:
            img = 0.7 * img + 0.3 * np.random.default_rng(blend + s).integers(0, 256, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def _transformer(path: Path, matrix: np.ndarray, *, source: str, target: str) -> TransformerRunner:
    from api.onnx_fixtures import write_matrix_transformer

    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 6000, DIM))
    cos = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    calibration = fit_calibration(cos, score_kind=SCORE_FORWARD, space=target, queries="plain")
    write_matrix_transformer(
        path, matrix=matrix, source_model=source, target_model=target, calibrations=(calibration,)
    )
    return TransformerRunner(path)


def test_a_model3_query_reaches_old_space_and_model2_native_identities(tmp_path) -> None:
    from api.onnx_fixtures import random_rotation

    m2 = _tiny_backbone(tmp_path / "m2", model_id=M2, rotation=None, noise=0.0)
    m3 = _tiny_backbone(
        tmp_path / "m3", model_id=M3, rotation=random_rotation(DIM, seed=9), noise=0.05
    )
    assert m3.model_id == M3 and m3.manifest.output_dim == DIM
    to_old = _transformer(
        tmp_path / "t21.onnx", random_rotation(DIM, seed=5), source=M2, target=OLD
    )
    bridge = _images(range(1000, 1300))  # images both models saw: fit model 3 -> model 2
    w32, *_ = np.linalg.lstsq(m3.embed(bridge), m2.embed(bridge), rcond=None)
    to_m2 = _transformer(tmp_path / "t32.onnx", w32, source=M3, target=M2)
    chain = TransformerChain(
        [
            SpaceMap(M2, OLD, to_old.map, to_old.metadata.calibration_for(queries="plain")),
            SpaceMap(M3, M2, to_m2.map, to_m2.metadata.calibration_for(queries="plain")),
        ]
    )
    assert [(h.source, h.target) for h in chain.route(M3, OLD)] == [(M3, M2), (M2, OLD)]  # type: ignore[union-attr]
    assert chain.route(OLD, M3) is None and chain.route(M3, M3) == []

    # identities 0-9: old space only (the legacy gallery); 10-19: model-2 native only
    enrol = _images(range(20))
    old_store, m2_store = FaissStore(dim=None, space=OLD), FaissStore(dim=None, space=M2)
    old_store.add(ids=np.arange(10), vectors=to_old.map(m2.embed(enrol[:10])))
    m2_store.add(ids=np.arange(10, 20), vectors=m2.embed(enrol[10:]))
    stores = {OLD: old_store, M2: m2_store, M3: FaissStore(dim=None, space=M3)}  # M3: empty yet
    identity = np.arange(20)

    found = identify_across(
        m3.embed(_images(range(20), blend=500)),
        source=M3,
        chain=chain,
        stores=stores,
        identity_of=lambda ids: identity[ids],
        native_calibrations={},
        reference=to_old.metadata.calibration_for(queries="plain"),
        top_k=3,
    )
    tops = [c[0] for c in found]
    assert [t.identity_id for t in tops] == list(range(20))
    assert {t.space for t in tops[:10]} == {OLD} and {t.space for t in tops[10:]} == {M2}
    # without the (3 -> 2) key the model-2 natives are out of reach: the chain is what did it
    direct_only = TransformerChain([SpaceMap(M2, OLD, to_old.map)])
    assert direct_only.route(M3, OLD) is None
    with pytest.raises(Exception, match="two transformers"):
        TransformerChain([SpaceMap(M2, OLD, to_old.map), SpaceMap(M2, OLD, to_old.map)])
