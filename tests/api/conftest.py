"""API test fixtures: an app on SQLite in tmp_path with a tiny synthetic backbone (no kit).

``with TestClient(create_app(settings))`` runs the lifespan (migrations, ONNX sessions, FAISS,
poller), exactly as uvicorn would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ServiceSettings
from service.startup import wait_until_started

from .onnx_fixtures import (
    TINY_DIM,
    TINY_OLD_MODEL_ID,
    png_bytes,
    random_rotation,
    write_matrix_transformer,
    write_tiny_backbone,
)

ADMIN_KEY = "test-admin-key-0123456789abcdef"
PROBLEM_FIELDS = ("type", "title", "status", "detail", "code")


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_backbone(tmp_path_factory.mktemp("tiny-backbone"))


@pytest.fixture(scope="session")
def transformer_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two valid transformers (rotations: cosine-preserving) and broken files."""
    root = tmp_path_factory.mktemp("transformers")
    files = {
        "a": write_matrix_transformer(root / "a.onnx", matrix=random_rotation(TINY_DIM, seed=1)),
        "b": write_matrix_transformer(root / "b.onnx", matrix=random_rotation(TINY_DIM, seed=2)),
        "wrong_dim": write_matrix_transformer(
            root / "wrong_dim.onnx", matrix=np.ones((TINY_DIM, 8), np.float32)
        ),
        "wrong_source": write_matrix_transformer(
            root / "wrong_source.onnx",
            matrix=random_rotation(TINY_DIM, seed=3),
            source_model="some-other-backbone",
        ),
    }
    garbage = root / "garbage.onnx"
    garbage.write_bytes(b"this is not an ONNX protobuf at all" * 20)
    files["garbage"] = garbage
    return files


def make_settings(tmp_path: Path, manifest: Path, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'facebridge.db'}",
        "data_dir": tmp_path / "var",
        "backbone_manifest": manifest,
        "gallery_model_id": TINY_OLD_MODEL_ID,
        "gallery_dim": TINY_DIM,
        "detector": "none",
        "face_check": "off",  # the tiny backbone's inputs are noise, not faces
        "admin_key": ADMIN_KEY,
        "inference_threads": 2,
        "generation_poll_seconds": 0.2,
        "max_upload_bytes": 256 * 1024,
        "max_transformer_bytes": 64 * 1024,
        "max_import_bytes": 4 * 1024 * 1024,
        "max_batch_images": 4,
    }
    values.update(overrides)
    return ServiceSettings(**values)


@pytest.fixture
def settings(tmp_path: Path, tiny_manifest: Path) -> ServiceSettings:
    return make_settings(tmp_path, tiny_manifest)


@contextmanager
def started_client(settings: ServiceSettings, **kwargs: Any) -> Iterator[TestClient]:
    """``with TestClient(create_app(settings))`` whose background start-up is done (its error
    re-raised): the lifespan returns at once, the server binds first."""
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False, **kwargs) as test_client:
        wait_until_started(app)
        yield test_client


@pytest.fixture
def client(settings: ServiceSettings) -> Iterator[TestClient]:
    with started_client(settings) as test_client:
        yield test_client


ADMIN = {"X-API-Key": ADMIN_KEY}


def create_key(client: TestClient, *scopes: str) -> dict[str, str]:
    response = client.post(
        "/v1/admin/keys", json={"name": "-".join(scopes), "scopes": list(scopes)}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    return {"X-API-Key": response.json()["key"]}


@pytest.fixture
def keys(client: TestClient) -> dict[str, dict[str, str]]:
    return {
        "admin": ADMIN,
        "identify": create_key(client, "identify"),
        "enrol": create_key(client, "enrol"),
    }


def upload_transformer(client: TestClient, path: Path, *, activate: bool = False) -> Any:
    with path.open("rb") as fh:
        return client.post(
            "/v1/admin/transformers",
            files={"file": (path.name, fh, "application/octet-stream")},
            data={"activate": "true" if activate else "false"},
            headers=ADMIN,
        )


@pytest.fixture
def active_version(client: TestClient, transformer_files: dict[str, Path]) -> str:
    response = upload_transformer(client, transformer_files["a"], activate=True)
    assert response.status_code == 201, response.text
    return response.json()["version"]


def image_part(seed: int, *, name: str | None = None) -> tuple[str, tuple[str, bytes, str]]:
    return ("image", (name or f"face-{seed}.png", png_bytes(seed), "image/png"))


def identify_while_swapping(
    client: TestClient, *, versions: list[str], seeds: list[int], rounds: int = 8
) -> list[Any]:
    """Hammer /v1/identify (one thread per seed) while activating ``versions[1]``,
    ``versions[0]``, ``versions[1]``, ... every 0.1 s (``versions[0]`` active at the start).
    Returns every response."""
    import threading
    import time

    responses: list[Any] = []
    stop = threading.Event()

    def hammer(seed: int) -> None:
        while not stop.is_set():
            responses.append(client.post("/v1/identify", files=[image_part(seed)], headers=ADMIN))

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in seeds]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(rounds):
            time.sleep(0.1)
            target = versions[(round_ + 1) % len(versions)]
            swapped = client.post(f"/v1/admin/transformers/{target}/activate", headers=ADMIN)
            assert swapped.status_code == 200, swapped.text
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return responses


@pytest.fixture
def enrolled(
    client: TestClient, keys: dict[str, dict[str, str]], active_version: str
) -> Callable[[int], list[int]]:
    """enrolled(n): n identities, identity i enrolled from image seed i; returns their ids."""

    def enrol(n: int) -> list[int]:
        ids = []
        for seed in range(n):
            created = client.post(
                "/v1/identities",
                json={"external_id": f"ext-{seed}", "name": f"Person {seed}"},
                headers=keys["enrol"],
            )
            assert created.status_code == 201, created.text
            identity_id = created.json()["id"]
            face = client.post(
                f"/v1/identities/{identity_id}/faces",
                files=[image_part(seed)],
                headers=keys["enrol"],
            )
            assert face.status_code == 201, face.text
            ids.append(identity_id)
        return ids

    return enrol


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    for key in PROBLEM_FIELDS:
        assert key in body, f"problem body lacks {key!r}: {body}"
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    assert body["request_id"] == response.headers["x-request-id"]
    return body
