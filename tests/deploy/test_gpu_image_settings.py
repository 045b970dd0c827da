"""The GPU image's settings (Dockerfile.gpu ENV) make the service refuse to start when ONNX
Runtime's CUDA provider is not really active: ORT alone would only warn and run on the CPU."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnxruntime as ort
import pytest

from service.app import create_app
from service.errors import ServiceUnavailable
from service.settings import ServiceSettings
from service.startup import wait_until_started

from .backbone_stub import write_stand_in_backbone
from .compose_file import DOCKER_DIR, image_env


def _settings(tmp_path: Path, env: dict[str, str]) -> ServiceSettings:
    manifest = tmp_path / "models" / "backbone.json"
    write_stand_in_backbone(manifest)
    overrides = {
        k.removeprefix("FACEBRIDGE_").lower(): v
        for k, v in env.items()
        if k.startswith("FACEBRIDGE_")
    }
    return ServiceSettings(
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        data_dir=tmp_path / "state",
        backbone_manifest=manifest,
        **overrides,
    )


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="CUDA is available here; the refusal path needs a machine without it",
)
def test_gpu_image_refuses_to_start_without_cuda(tmp_path: Path) -> None:
    gpu_env = image_env(DOCKER_DIR / "Dockerfile.gpu")
    assert gpu_env["FACEBRIDGE_DEVICE"] == "cuda"
    assert gpu_env["FACEBRIDGE_REQUIRE_CUDA"] == "true"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    app = create_app(_settings(tmp_path, gpu_env))
    with pytest.raises(ServiceUnavailable, match="CUDA"), TestClient(app):
        pass


def test_cpu_image_settings_start(tmp_path: Path) -> None:
    """The same check passes with the CPU image's ENV (device cpu, CUDA not required)."""
    cpu_env = image_env(DOCKER_DIR / "Dockerfile")
    assert cpu_env["FACEBRIDGE_DEVICE"] == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    app = create_app(_settings(tmp_path, cpu_env))
    with TestClient(app) as client:
        wait_until_started(app)
        body = client.get("/readyz").json()
    assert body["checks"]["backbone"] == "deploy-test-tiles-96"
