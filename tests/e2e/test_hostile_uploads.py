"""Issue 11 (hardening) on a REAL uvicorn process: the server binds before its slow start-up,
answers an upload without a key before reading its body, and stays within 300 MB of extra
resident memory for every hostile upload of the issue (measured with psutil on the server)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
from api.onnx_fixtures import TINY_OLD_MODEL_ID, write_tiny_backbone

from .conftest import ADMIN, Server, post_until_answered, server_env, start_tiny_server
from .hostile import huge_png, npz_bomb, rss_peak

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
RSS_LIMIT_MIB = 300


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    pytest.importorskip("psutil")
    server = start_tiny_server(tmp_path_factory.mktemp("hostile"), FACEBRIDGE_DETECTOR="dlib")
    try:
        yield server
    finally:
        server.kill()


def _growth(server: Server, run) -> tuple[object, float]:  # type: ignore[no-untyped-def]
    assert server.process is not None
    with rss_peak(server.process.pid) as rss:
        result = run()
    return result, rss.growth_mib


@pytest.mark.parametrize("path", ["/v1/gallery/import", "/v1/admin/transformers"])
def test_a_1_gib_upload_without_a_key_is_refused_before_its_body(
    hostile_server: Server, path: str
) -> None:
    (status, sent), growth = _growth(
        hostile_server,
        lambda: post_until_answered(
            hostile_server,
            path,
            total=1 << 30,
            api_key=None,
            declare_length=True,
            part_name="file",
        ),
    )
    assert status == 401
    assert sent < 4 << 20, f"{sent} bytes were sent before the 401"
    assert growth < RSS_LIMIT_MIB
    print(f"{path} without a key: 401 after {sent} bytes, RSS +{growth:.1f} MiB")


def test_an_npz_zip_bomb_stays_within_the_memory_bound(
    hostile_server: Server, tmp_path: Path
) -> None:
    bomb = npz_bomb(tmp_path / "bomb.npz", rows=2_000_000, dim=128)  # 1 GiB of vectors, ~1 MB

    def upload() -> httpx.Response:
        with hostile_server.client() as client, bomb.open("rb") as fh:
            return client.post(
                "/v1/gallery/import",
                files={"file": ("bomb.npz", fh, "application/octet-stream")},
                headers=ADMIN,
            )

    response, growth = _growth(hostile_server, upload)
    assert response.status_code == 422, response.text  # type: ignore[attr-defined]
    assert growth < RSS_LIMIT_MIB, f"RSS +{growth:.0f} MiB for a {bomb.stat().st_size} B file"
    print(f"npz bomb ({bomb.stat().st_size} B -> 1 GiB): 422, RSS +{growth:.1f} MiB")


def test_a_6000_px_png_stays_within_the_memory_bound(hostile_server: Server) -> None:
    pytest.importorskip("dlib")
    data = huge_png(6000)

    def identify() -> tuple[httpx.Response, float]:
        start = time.perf_counter()
        with hostile_server.client() as client:
            response = client.post(
                "/v1/identify", files=[("image", ("big.png", data, "image/png"))], headers=ADMIN
            )
        return response, time.perf_counter() - start

    (response, seconds), growth = _growth(hostile_server, identify)  # type: ignore[misc]
    assert response.status_code == 422, response.text  # no face in a gradient
    assert response.json()["code"] == "no-face"
    assert growth < RSS_LIMIT_MIB
    print(f"6000x6000 PNG ({len(data)} B): 422 no-face in {seconds:.2f} s, RSS +{growth:.1f} MiB")


def test_the_server_binds_before_a_slow_start_up(tmp_path: Path) -> None:
    """A database that accepts the connection and never answers: migrations hang, yet the
    server answers /healthz at once and /readyz says what it is waiting for."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # never accepted, never answered
    port = silent.getsockname()[1]
    root = tmp_path / "slow"
    manifest = write_tiny_backbone(root / "backbone")
    env = server_env(
        root,
        manifest=manifest,
        gallery_model_id=TINY_OLD_MODEL_ID,
        database_url=f"postgresql+psycopg://facebridge@127.0.0.1:{port}/facebridge",
    )
    server = Server(workdir=root, env=env)
    try:
        server.start(wait=False)
        deadline, health = time.monotonic() + 60, None
        while time.monotonic() < deadline and health is None:
            try:
                health = httpx.get(f"{server.url}/healthz", timeout=2.0)
            except httpx.HTTPError:
                time.sleep(0.2)
        assert health is not None, f"the server never bound:\n{server.log_tail()}"
        assert health.status_code == 200 and health.json()["status"] == "starting"
        ready = httpx.get(f"{server.url}/readyz", timeout=2.0)
        assert ready.status_code == 503
        assert "migrating the database" in ready.json()["checks"]["startup"]
        data = httpx.get(f"{server.url}/v1/identities", headers=ADMIN, timeout=2.0)
        assert data.status_code == 503 and "starting" in data.json()["detail"]
    finally:
        server.kill()
        silent.close()
