"""Issue 11 (hardening), transformers: metadata of the wrong type is a 422 that leaves no file,
errors name the uploaded file, a file that outputs NaN on real faces is refused (calibration
sample, validation pairs) or answered 503 at run time, and a version that does not fit the
running backbone is not served (503 with the reason, /readyz not ready)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.inference.backbone import OnnxBackbone
from service.inference.images import decode_image
from service.startup import wait_until_started

from .conftest import (
    ADMIN,
    assert_problem,
    image_part,
    make_settings,
    started_client,
    upload_transformer,
)
from .onnx_fixtures import TINY_DIM, png_bytes, random_rotation, write_matrix_transformer

TRAP_SEED = 5  # the image whose query vector the trap transformer turns into NaN


def stored_files(client: TestClient) -> list[str]:
    directory = wait_until_started(client.app).settings.transformers_path  # type: ignore[arg-type]
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def query_vector(manifest: Path, seed: int) -> np.ndarray:
    """The unit new-model vector the service computes for image ``seed`` (flip-averaged)."""
    crop = decode_image(png_bytes(seed), max_bytes=1 << 20, max_pixels=1 << 20)
    return OnnxBackbone(manifest).embed(crop[None], flip_average=True)[0]


@pytest.mark.parametrize("metrics", ["[1, 2, 3]", '"fine"', '{"top1": {"nested": 1}}', "{oops"])
def test_metrics_of_the_wrong_type_are_422_and_leave_no_file(
    client: TestClient, tmp_path: Path, metrics: str
) -> None:
    path = write_matrix_transformer(
        tmp_path / "t.onnx",
        matrix=random_rotation(TINY_DIM, seed=1),
        extra_props={"facebridge.metrics": metrics},
    )
    body = assert_problem(upload_transformer(client, path), 422, "contract-violation")
    assert "facebridge.metrics" in body["detail"]
    assert stored_files(client) == []
    assert client.get("/v1/admin/transformers", headers=ADMIN).json()["items"] == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("facebridge.threshold", "nan"),
        ("facebridge.input_dim", "sixteen"),
        ("facebridge.recipe", "r" * 300),
        ("facebridge.fusion_weight", "inf"),
        ("facebridge.format_version", "99"),
        ("facebridge.validation_sample", '{"dtype": "<f4", "shape": [1, 3], "base64": ""}'),
    ],
)
def test_every_metadata_field_is_type_checked(
    client: TestClient, tmp_path: Path, key: str, value: str
) -> None:
    path = write_matrix_transformer(
        tmp_path / "t.onnx", matrix=random_rotation(TINY_DIM, seed=1), extra_props={key: value}
    )
    body = assert_problem(upload_transformer(client, path), 422)
    assert key in body["detail"] or "malformed" in body["detail"], body["detail"]
    assert stored_files(client) == []


def test_a_422_names_the_uploaded_file_not_a_temp_file(client: TestClient, tmp_path: Path) -> None:
    path = tmp_path / "my-mapping.onnx"
    path.write_bytes(b"garbage " * 100)
    body = assert_problem(upload_transformer(client, path), 422)
    assert "my-mapping.onnx" in body["detail"]
    assert ".upload-" not in body["detail"] and ".check" not in body["detail"]


def test_nan_on_real_faces_is_caught_by_the_validation_sample(
    client: TestClient, tmp_path: Path, tiny_manifest: Path
) -> None:
    trap = query_vector(tiny_manifest, TRAP_SEED)
    real = np.stack([query_vector(tiny_manifest, s) for s in (TRAP_SEED, 6, 7)])
    path = write_matrix_transformer(
        tmp_path / "nan.onnx",
        matrix=random_rotation(TINY_DIM, seed=1),
        nan_above=(trap, 0.9),
        validation_sample=real,
    )
    body = assert_problem(upload_transformer(client, path), 422, "contract-violation")
    assert "NaN" in body["detail"] and "validation sample" in body["detail"]
    assert stored_files(client) == []


def test_nan_on_real_faces_is_caught_by_the_validation_pairs(
    tmp_path: Path, tiny_manifest: Path
) -> None:
    trap = query_vector(tiny_manifest, TRAP_SEED)
    pairs = tmp_path / "pairs.npz"
    new = np.stack([query_vector(tiny_manifest, s) for s in range(TRAP_SEED, TRAP_SEED + 8)])
    old = np.random.default_rng(0).standard_normal((8, TINY_DIM)).astype(np.float32)
    np.savez(pairs, old=old, new=new, label=np.arange(8))
    path = write_matrix_transformer(
        tmp_path / "nan.onnx", matrix=random_rotation(TINY_DIM, seed=1), nan_above=(trap, 0.9)
    )
    with started_client(make_settings(tmp_path, tiny_manifest, validation_pairs=pairs)) as client:
        body = assert_problem(upload_transformer(client, path), 422, "contract-violation")
    assert "NaN" in body["detail"] and "validation pairs" in body["detail"]


def test_nan_at_run_time_is_a_503_counted_in_metrics(
    client: TestClient, tmp_path: Path, tiny_manifest: Path
) -> None:
    """An old file (no validation sample) whose NaN region the random probes miss: accepted,
    but identify answers 503 naming the version, never 200 with zero candidates."""
    trap = query_vector(tiny_manifest, TRAP_SEED)
    path = write_matrix_transformer(
        tmp_path / "nan.onnx", matrix=random_rotation(TINY_DIM, seed=1), nan_above=(trap, 0.9)
    )
    created = upload_transformer(client, path, activate=True)
    assert created.status_code == 201, created.text
    version = created.json()["version"]
    fine = client.post("/v1/identify", files=[image_part(6)], headers=ADMIN)
    assert fine.status_code == 200
    response = client.post("/v1/identify", files=[image_part(TRAP_SEED)], headers=ADMIN)
    body = assert_problem(response, 503, "transformer-nonfinite")
    assert version in body["detail"] and "NaN" in body["detail"]
    metrics = client.get("/metrics").text
    assert f'facebridge_transformer_nonfinite_total{{version="{version}"}} 1.0' in metrics


def test_a_transformer_for_another_backbone_is_not_served(
    tmp_path: Path, tiny_manifest: Path
) -> None:
    """The README's migration order: upload + activate before FACEBRIDGE_BACKBONE_MANIFEST is
    set; a service started later with a different backbone must refuse to serve it."""
    other = write_matrix_transformer(
        tmp_path / "r50.onnx",
        matrix=random_rotation(TINY_DIM, seed=1),
        source_model="arcface-r50",
    )
    without_backbone = make_settings(tmp_path, tiny_manifest, backbone_manifest=None)
    with started_client(without_backbone) as client:
        created = upload_transformer(client, other, activate=True)
        assert created.status_code == 201, created.text
    version = created.json()["version"]
    with started_client(make_settings(tmp_path, tiny_manifest)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        check = ready.json()["checks"]["transformer"]
        assert check.startswith("fail") and "arcface-r50" in check and version in check
        body = assert_problem(
            client.post("/v1/identify", files=[image_part(1)], headers=ADMIN), 503, "unavailable"
        )
        assert version in body["detail"] and "arcface-r50" in body["detail"]
        metrics = client.get("/metrics").text
        assert "facebridge_transformer_in_sync 0.0" in metrics
        failures = [
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("facebridge_transformer_load_failures_total ")
        ]
        assert failures and failures[0] >= 1
