"""Two-way transformers: the contract of the file, upload probes, fused identify/verify over
HTTP (against a naive NumPy computation) and hot swaps between one-way and two-way versions."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.errors import ContractError
from service.inference.backbone import OnnxBackbone
from service.inference.images import decode_image
from service.inference.transformer import TransformerRunner

from .conftest import (
    ADMIN,
    assert_problem,
    identify_while_swapping,
    image_part,
    upload_transformer,
)
from .onnx_fixtures import TINY_DIM, png_bytes, random_rotation, write_matrix_transformer

WEIGHT = 0.6  # far from 1, so the backward term can change the ranking


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# The file contract (TransformerRunner)
# ---------------------------------------------------------------------------------------------
def test_two_way_session_runs_each_head_alone(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    forward, backward = rng.standard_normal((6, 5)), rng.standard_normal((5, 6))
    path = write_matrix_transformer(
        tmp_path / "two.onnx", matrix=forward, backward=backward, fusion_weight=0.8
    )
    runner = TransformerRunner(path)
    assert runner.two_way and runner.fusion_weight == pytest.approx(0.8)
    assert (runner.input_dim, runner.output_dim) == (6, 5)
    new, old = rng.standard_normal((7, 6)), rng.standard_normal((3, 5))
    np.testing.assert_allclose(runner.map_raw(new), new @ forward, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(runner.map(new), unit(new @ forward), atol=1e-5)
    np.testing.assert_allclose(runner.map_gallery_raw(old), old @ backward, rtol=1e-5, atol=1e-5)
    mapped = runner.map_gallery(old)
    assert mapped.shape == (3, 6) and mapped.dtype == np.float32
    np.testing.assert_allclose(mapped, unit(old @ backward), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(mapped, axis=1), 1.0, atol=1e-6)
    assert runner.map_gallery(np.zeros((0, 5))).shape == (0, 6)
    with pytest.raises(ContractError, match="expected dimension 5"):
        runner.map_gallery(np.zeros((2, 6)))

    one = TransformerRunner(write_matrix_transformer(tmp_path / "one.onnx", matrix=forward))
    assert not one.two_way and one.fusion_weight == 1.0
    np.testing.assert_allclose(one.map(new), runner.map(new), atol=1e-6)
    with pytest.raises(ContractError, match="one-way"):
        one.map_gallery(old)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gallery_output": False}, "needs both gallery tensors"),
        ({"fusion_weight": 1.0}, "the graph is two-way .* but the metadata has no"),
        ({"backward": None, "fusion_weight": 0.9}, "the graph is one-way .*fusion_weight = 0.9"),
        ({"backward": np.ones((TINY_DIM, 8))}, "backward map must take"),
        ({"backward": np.ones((8, TINY_DIM))}, "backward map must take"),
        ({"gallery_batch": "batch"}, "must be independent"),
    ],
)
def test_off_contract_two_way_files_are_one_line_errors(
    tmp_path: Path, options: dict, message: str
) -> None:
    kwargs = {"backward": np.eye(TINY_DIM), **options}
    path = write_matrix_transformer(tmp_path / "t.onnx", matrix=np.eye(TINY_DIM), **kwargs)
    with pytest.raises(ContractError, match=message) as caught:
        TransformerRunner(path)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------
# Registry: upload probes both heads; list/get expose the fusion weight
# ---------------------------------------------------------------------------------------------
def test_upload_exposes_fusion_and_probes_the_gallery_head(
    client: TestClient, tmp_path: Path
) -> None:
    rotation = random_rotation(TINY_DIM, seed=1)
    two = write_matrix_transformer(tmp_path / "two.onnx", matrix=rotation, backward=rotation.T)
    one = write_matrix_transformer(tmp_path / "one.onnx", matrix=rotation)
    created = upload_transformer(client, two)
    assert created.status_code == 201, created.text
    assert created.json()["two_way"] is True and created.json()["fusion_weight"] == 0.9
    version = created.json()["version"]
    assert upload_transformer(client, one).json()["two_way"] is False
    listed = {
        t["version"]: t for t in client.get("/v1/admin/transformers", headers=ADMIN).json()["items"]
    }
    assert {(t["two_way"], t["fusion_weight"]) for t in listed.values()} == {
        (True, 0.9),
        (False, 1.0),
    }
    got = client.get(f"/v1/admin/transformers/{version}", headers=ADMIN).json()
    assert got["two_way"] is True and got["fusion_weight"] == 0.9

    nan_back = np.full((TINY_DIM, TINY_DIM), np.nan, np.float32)
    broken = write_matrix_transformer(tmp_path / "nan.onnx", matrix=rotation, backward=nan_back)
    body = assert_problem(upload_transformer(client, broken), 422)
    assert "gallery map outputs NaN/inf" in body["detail"]
    assert len(client.get("/v1/admin/transformers", headers=ADMIN).json()["items"]) == 2


# ---------------------------------------------------------------------------------------------
# Fused identify / verify over HTTP
# ---------------------------------------------------------------------------------------------
@dataclass
class Scene:
    """A probe image, a gallery built around it and the two maps (forward F, backward B)."""

    seed: int
    forward: np.ndarray
    backward: np.ndarray
    gallery: np.ndarray  # [m, d_old] unit
    external_ids: list[str]
    query: np.ndarray  # the probe's unit (flip-averaged) new-model vector

    def forward_scores(self) -> np.ndarray:
        return self.gallery @ unit(self.query @ self.forward)

    def fused_scores(self) -> np.ndarray:
        backward = unit(self.gallery @ self.backward) @ self.query
        return WEIGHT * self.forward_scores() + (1 - WEIGHT) * backward

    def npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, old=self.gallery.astype(np.float32), external_id=np.array(self.external_ids))
        return buf.getvalue()


@pytest.fixture
def scene(tiny_manifest: Path) -> Scene:
    """Gallery row 0 wins the forward score, row 1 the fused one (checked here), + distractors."""
    seed = 7
    backbone = OnnxBackbone(tiny_manifest, batch_size=1)
    crop = decode_image(png_bytes(seed), max_bytes=1 << 20, max_pixels=1 << 20)
    query = unit(backbone.embed(crop[None], flip_average=True)[0])
    forward, backward = random_rotation(TINY_DIM, seed=11), random_rotation(TINY_DIM, seed=12)
    rng = np.random.default_rng(3)
    mapped = unit(query @ forward)
    near_forward = unit(mapped + 0.45 * unit(rng.standard_normal(TINY_DIM)))
    near_backward = unit(mapped + unit(query @ np.linalg.inv(backward)))  # h(g) close to q
    distractors = unit(rng.standard_normal((6, TINY_DIM)))
    gallery = unit(np.vstack([near_forward, near_backward, distractors]))
    made = Scene(seed, forward, backward, gallery, [f"g-{i}" for i in range(8)], query)
    assert np.argmax(made.forward_scores()) == 0 and np.argmax(made.fused_scores()) == 1
    return made


def _identify(client: TestClient, seed: int, top_k: int = 3) -> dict:
    response = client.post(
        "/v1/identify", files=[image_part(seed)], params={"top_k": top_k}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def _activate(client: TestClient, path: Path) -> str:
    response = upload_transformer(client, path, activate=True)
    assert response.status_code in (200, 201), response.text
    return response.json()["version"]


def test_identify_and_verify_use_the_fused_score(
    client: TestClient, scene: Scene, tmp_path: Path
) -> None:
    two = write_matrix_transformer(
        tmp_path / "two.onnx",
        matrix=scene.forward,
        backward=scene.backward,
        fusion_weight=WEIGHT,
        threshold=0.6,
    )
    one = write_matrix_transformer(tmp_path / "one.onnx", matrix=scene.forward, threshold=0.6)
    imported = client.post(
        "/v1/gallery/import", files={"file": ("g.npz", scene.npz())}, headers=ADMIN
    )
    assert imported.status_code == 200, imported.text

    _activate(client, two)
    result = _identify(client, scene.seed)
    fused = scene.fused_scores()
    order = np.argsort(-fused)[:3]
    assert [c["external_id"] for c in result["candidates"]] == [
        scene.external_ids[i] for i in order
    ]
    np.testing.assert_allclose([c["score"] for c in result["candidates"]], fused[order], atol=1e-5)
    assert result["match"]["external_id"] == "g-1"  # fused 0.7 >= 0.6
    assert result["timings"]["rerank_ms"] >= 0
    assert 'facebridge_stage_duration_seconds_count{stage="rerank"}' in client.get("/metrics").text

    identity_of = {
        c["external_id"]: c["identity_id"] for c in _identify(client, scene.seed, 8)["candidates"]
    }
    for row in (0, 1):
        verified = client.post(
            "/v1/verify",
            files=[image_part(scene.seed)],
            data={"identity_id": identity_of[f"g-{row}"]},
            headers=ADMIN,
        ).json()
        assert verified["score"] == pytest.approx(fused[row], abs=1e-5)
        assert verified["match"] is bool(fused[row] >= 0.6)

    # The same forward map without the backward one: plain cosines, the forward ranking.
    _activate(client, one)
    plain = scene.forward_scores()
    result = _identify(client, scene.seed)
    order = np.argsort(-plain)[:3]
    assert [c["external_id"] for c in result["candidates"]] == [
        scene.external_ids[i] for i in order
    ]
    np.testing.assert_allclose([c["score"] for c in result["candidates"]], plain[order], atol=1e-5)
    assert result["match"]["external_id"] == "g-0" and result["timings"]["rerank_ms"] == 0


def test_hot_swap_between_one_way_and_two_way_never_fails(
    client: TestClient, scene: Scene, tmp_path: Path
) -> None:
    """Every answer, during swaps, is exactly the scoring of the version it names."""
    files = {
        "two": write_matrix_transformer(
            tmp_path / "two.onnx",
            matrix=scene.forward,
            backward=scene.backward,
            fusion_weight=WEIGHT,
        ),
        "one": write_matrix_transformer(tmp_path / "one.onnx", matrix=scene.forward),
    }
    client.post(
        "/v1/gallery/import", files={"file": ("g.npz", scene.npz())}, headers=ADMIN
    ).raise_for_status()
    versions = {name: _activate(client, path) for name, path in files.items()}
    expected_top = {
        versions["two"]: ("g-1", float(scene.fused_scores().max())),
        versions["one"]: ("g-0", float(scene.forward_scores().max())),
    }
    responses = identify_while_swapping(
        client, versions=[versions["one"], versions["two"]], seeds=[scene.seed] * 2, rounds=6
    )
    answers = [(r.status_code, r.json() if r.is_success else None) for r in responses]
    assert answers and all(status == 200 for status, _ in answers), answers[:5]
    seen = set()
    for _, body in answers:
        result = body["results"][0]
        top = result["candidates"][0]
        want_id, want_score = expected_top[result["transformer"]]
        assert top["external_id"] == want_id and top["score"] == pytest.approx(want_score, abs=1e-5)
        seen.add(result["transformer"])
    assert seen == set(expected_top)
