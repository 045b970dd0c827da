"""POST /v1/identify and /v1/verify: happy paths, batches, thresholds, every bad input."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.settings import ServiceSettings

from .conftest import assert_problem, image_part, make_settings


def test_identify_finds_each_enrolled_face_in_order(
    client: TestClient, keys: dict, enrolled: Callable[[int], list[int]], active_version: str
) -> None:
    ids = enrolled(4)
    order = [2, 0, 3]
    response = client.post(
        "/v1/identify",
        files=[image_part(seed) for seed in order],
        params={"top_k": 3},
        headers=keys["identify"],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["top_k"] == 3 and body["threshold"] == 0.5  # the transformer's threshold
    assert [r["index"] for r in body["results"]] == [0, 1, 2]
    for result, seed in zip(body["results"], order, strict=True):
        top = result["candidates"][0]
        assert top["identity_id"] == ids[seed]
        assert top["external_id"] == f"ext-{seed}" and top["name"] == f"Person {seed}"
        assert top["score"] == pytest.approx(1.0, abs=1e-4)
        assert result["match"] == top
        assert len(result["candidates"]) == 3
        assert [c["score"] for c in result["candidates"]] == sorted(
            (c["score"] for c in result["candidates"]), reverse=True
        )
        assert result["backbone"] == "tiny-backbone-16"
        assert result["transformer"] == active_version
        assert result["timings"]["total_ms"] >= result["timings"]["embed_ms"] >= 0
    metrics = client.get("/metrics").text
    assert 'facebridge_stage_duration_seconds_count{stage="embed"}' in metrics
    assert 'facebridge_stage_duration_seconds_count{stage="search"}' in metrics
    assert f'facebridge_active_transformer_info{{version="{active_version}"}} 1.0' in metrics
    assert "facebridge_gallery_vectors 4.0" in metrics


def test_threshold_decides_the_match(
    client: TestClient, keys: dict, enrolled: Callable[[int], list[int]]
) -> None:
    enrolled(2)
    stranger = client.post(
        "/v1/identify", files=[image_part(999)], params={"top_k": 1}, headers=keys["identify"]
    ).json()["results"][0]
    assert stranger["candidates"] and stranger["match"] is None  # unrelated noise: low cosine
    strict = client.post(
        "/v1/identify",
        files=[image_part(0)],
        params={"threshold": 1.0, "top_k": 1},
        headers=keys["identify"],
    ).json()
    assert strict["threshold"] == 1.0


def test_verify_same_and_other_identity(
    client: TestClient, keys: dict, enrolled: Callable[[int], list[int]]
) -> None:
    ids = enrolled(2)
    same = client.post(
        "/v1/verify", files=[image_part(0)], data={"identity_id": ids[0]}, headers=keys["identify"]
    )
    assert same.status_code == 200, same.text
    assert same.json()["match"] is True and same.json()["score"] == pytest.approx(1.0, abs=1e-4)
    other = client.post(
        "/v1/verify", files=[image_part(0)], data={"identity_id": ids[1]}, headers=keys["identify"]
    ).json()
    assert other["match"] is False and other["score"] < 0.5
    unknown = client.post(
        "/v1/verify", files=[image_part(0)], data={"identity_id": 99999}, headers=keys["identify"]
    )
    assert_problem(unknown, 404, "not-found")


def test_identify_on_an_empty_gallery_returns_no_candidates(
    client: TestClient, keys: dict, active_version: str
) -> None:
    result = client.post("/v1/identify", files=[image_part(1)], headers=keys["identify"])
    assert result.status_code == 200, result.text
    assert result.json()["results"][0]["candidates"] == []
    assert result.json()["results"][0]["match"] is None


def test_identify_without_an_active_transformer_is_503(client: TestClient, keys: dict) -> None:
    response = client.post("/v1/identify", files=[image_part(1)], headers=keys["identify"])
    body = assert_problem(response, 503, "unavailable")
    assert "transformer" in body["detail"]


@pytest.mark.parametrize("top_k", [0, 101])
def test_top_k_out_of_range_is_422(client: TestClient, keys: dict, top_k: int) -> None:
    response = client.post(
        "/v1/identify", files=[image_part(1)], params={"top_k": top_k}, headers=keys["identify"]
    )
    assert_problem(response, 422, "invalid-input")


def _jpeg(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 180, 160)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "invalid-image"),
        (b"definitely not an image", "invalid-image"),
        (_jpeg((112, 112))[:200], "invalid-image"),  # truncated
        (_jpeg((250, 250)), "invalid-image"),  # a photo, but no detector installed here
    ],
    ids=["empty", "garbage", "truncated", "photo-without-detector"],
)
def test_bad_images_are_422_and_never_500(
    client: TestClient, keys: dict, active_version: str, payload: bytes, code: str
) -> None:
    response = client.post(
        "/v1/identify",
        files=[("image", ("x.jpg", payload, "image/jpeg"))],
        headers=keys["identify"],
    )
    assert_problem(response, 422, code)


def test_a_bad_image_in_a_batch_gets_its_own_status(
    client: TestClient, keys: dict, active_version: str
) -> None:
    files = [image_part(1), ("image", ("bad.jpg", b"nope", "image/jpeg")), image_part(2)]
    response = client.post("/v1/identify", files=files, headers=keys["identify"])
    assert response.status_code == 200, response.text  # the request itself is valid
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["ok", "invalid-image", "ok"]
    assert [r["index"] for r in results] == [0, 1, 2]
    bad = results[1]
    assert bad["problem"]["status"] == 422 and bad["problem"]["code"] == "invalid-image"
    assert bad["problem"]["detail"].startswith("image 1:")
    assert bad["candidates"] == [] and bad["match"] is None and bad["filename"] == "bad.jpg"
    assert results[0]["problem"] is None and results[2]["problem"] is None


def test_a_single_bad_image_is_still_a_problem(
    client: TestClient, keys: dict, active_version: str
) -> None:
    files = [("image", ("bad.jpg", b"nope", "image/jpeg"))]
    body = assert_problem(client.post("/v1/identify", files=files, headers=keys["identify"]), 422)
    assert body["code"] == "invalid-image" and "image 0" not in body["detail"]


def test_no_image_part_is_422(client: TestClient, keys: dict) -> None:
    response = client.post(
        "/v1/identify", files=[("other", ("x.png", b"x", "image/png"))], headers=keys["identify"]
    )
    assert_problem(response, 422, "invalid-input")


def test_too_many_images_is_422(client: TestClient, keys: dict, active_version: str) -> None:
    files = [image_part(seed) for seed in range(5)]  # max_batch_images = 4 in the test settings
    assert_problem(client.post("/v1/identify", files=files, headers=keys["identify"]), 422)


@pytest.mark.dlib
def test_photo_without_a_face_is_422_no_face(tmp_path, tiny_manifest) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("dlib")
    from .conftest import ADMIN, started_client, upload_transformer
    from .onnx_fixtures import random_rotation, write_matrix_transformer

    settings: ServiceSettings = make_settings(tmp_path, tiny_manifest, detector="dlib")
    path = write_matrix_transformer(tmp_path / "t.onnx", matrix=random_rotation(16, seed=1))
    blank = np.full((250, 250, 3), 127, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(blank).save(buf, format="PNG")
    with started_client(settings) as client:
        assert upload_transformer(client, path, activate=True).status_code == 201
        response = client.post(
            "/v1/identify",
            files=[("image", ("wall.png", buf.getvalue(), "image/png"))],
            headers=ADMIN,
        )
    assert_problem(response, 422, "no-face")
