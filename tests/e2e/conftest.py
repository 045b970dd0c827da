"""End-to-end fixtures: REAL uvicorn processes on 127.0.0.1, configured only through the env.

Expensive things (the fitted kit transformers, the protocol gallery) are session-scoped and
live in tmp dirs; the kit is only read.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from .kit_assets import KitAssets, build_kit_assets

ADMIN_KEY = "e2e-admin-key-0123456789abcdef"
ADMIN = {"X-API-Key": ADMIN_KEY}
REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One ``uvicorn --factory service.app:create_app`` process and its env."""

    workdir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"server-{self.port}.log"

    def start(self, *, wait: bool = True) -> Server:
        """Start the process; with ``wait``, until /readyz answers 200."""
        assert self.process is None, "already running"
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "service.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.starts += 1
        if not wait:
            return self
        try:
            self.wait_ready()
        except RuntimeError:
            if self.starts > 1 or "address already in use" not in self.log_tail().lower():
                raise
            self.process = None  # another process took the free port first: try a new one
            self.port = free_port()
            return self.start()
        return self

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=2.0)
                if response.status_code == 200:
                    return response.json()
                last = response.text
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (graceful: the lifespan saves the index), SIGKILL after a grace period."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (the crash the restart test needs)."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60.0), **kwargs)


def server_env(
    workdir: Path,
    *,
    manifest: Path,
    gallery_model_id: str,
    database_url: str | None = None,
    **extra: str,
) -> dict[str, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        "FACEBRIDGE_DATABASE_URL": database_url or f"sqlite:///{workdir / 'facebridge.db'}",
        "FACEBRIDGE_DATA_DIR": str(workdir / "var"),
        "FACEBRIDGE_BACKBONE_MANIFEST": str(manifest),
        "FACEBRIDGE_GALLERY_MODEL_ID": gallery_model_id,
        "FACEBRIDGE_ADMIN_KEY": ADMIN_KEY,
        "FACEBRIDGE_DETECTOR": "none",
        "FACEBRIDGE_INFERENCE_THREADS": "2",
        "FACEBRIDGE_ORT_INTRA_OP_THREADS": "1",
        "FACEBRIDGE_FAISS_THREADS": "1",
        "FACEBRIDGE_GENERATION_POLL_SECONDS": "0.5",
        "FACEBRIDGE_LOG_LEVEL": "warning",
    }
    env.update(extra)
    return env


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers a test starts are appended here and always stopped (never left running)."""
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def start_tiny_server(root: Path, **extra: str) -> Server:
    """A started server on the tiny synthetic models (tests/api/onnx_fixtures.py) with a
    rotation transformer uploaded and active; ``extra``: more FACEBRIDGE_* variables."""
    from api.onnx_fixtures import (
        TINY_DIM,
        TINY_OLD_MODEL_ID,
        random_rotation,
        write_matrix_transformer,
        write_tiny_backbone,
    )

    manifest = write_tiny_backbone(root / "backbone")
    transformer = write_matrix_transformer(
        root / "t.onnx", matrix=random_rotation(TINY_DIM, seed=1)
    )
    env = server_env(
        root / "server",
        manifest=manifest,
        gallery_model_id=TINY_OLD_MODEL_ID,
        FACEBRIDGE_GALLERY_DIM=str(TINY_DIM),
        **extra,
    )
    server = Server(workdir=root / "server", env=env).start()
    try:
        with server.client() as client:
            upload_transformer(client, transformer, activate=True)
    except BaseException:
        server.kill()
        raise
    return server


def post_until_answered(
    server: Server,
    path: str,
    *,
    total: int,
    api_key: str | None = ADMIN_KEY,
    declare_length: bool = False,
    part_name: str = "image",
) -> tuple[int, int]:
    """POST a multipart body of up to ``total`` bytes over a raw socket, stopping as soon as the
    server answers. Chunked, or with ``Content-Length: total`` when ``declare_length``.
    Returns (status, bytes of body sent before the answer)."""
    import select
    import socket

    chunk = b"\xff" * 65536
    sent = 0
    key = f"X-API-Key: {api_key}\r\n" if api_key else ""
    framing = f"Content-Length: {total}" if declare_length else "Transfer-Encoding: chunked"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{key}"
            f"Content-Type: multipart/form-data; boundary=x\r\n{framing}\r\n\r\n"
        )
        part = (
            f'--x\r\nContent-Disposition: form-data; name="{part_name}"; filename="big.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        frame = (
            (lambda data: data)
            if declare_length
            else (lambda data: b"%x\r\n%s\r\n" % (len(data), data))
        )
        sock.sendall(head.encode() + frame(part))
        sent = len(part)
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(frame(chunk[: total - sent]))
            except OSError:
                break  # the server closed the connection after answering
            sent += min(len(chunk), total - sent)
        answer = sock.recv(4096).decode("latin-1")
    return int(answer.split(" ", 2)[1]), sent


def upload_transformer(client: httpx.Client, path: Path, *, activate: bool) -> dict[str, Any]:
    with path.open("rb") as fh:
        response = client.post(
            "/v1/admin/transformers",
            files={"file": (path.name, fh, "application/octet-stream")},
            data={"activate": str(activate).lower()},
            headers=ADMIN,
        )
    assert response.status_code in (200, 201), response.text
    return response.json()


def import_gallery(client: httpx.Client, path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        response = client.post(
            "/v1/gallery/import",
            files={"file": (path.name, fh, "application/octet-stream")},
            headers=ADMIN,
        )
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------------------------------------
# The kit: protocol gallery + probes, two fitted transformers (session-scoped, in tmp dirs)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def kit_assets(kit_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> KitAssets:
    pytest.importorskip("torch", reason="fitting the e2e transformers needs the train extra")
    return build_kit_assets(kit_dir, tmp_path_factory.mktemp("kit-e2e"))


@dataclass
class KitServer:
    server: Server
    versions: dict[str, str]  # recipe -> version id on this server


def _start_kit_server(
    kit_assets: KitAssets, workdir: Path, **extra: str
) -> tuple[Server, dict[str, str]]:
    """A server with the kit backbone, the eval gallery imported over HTTP and both
    transformers uploaded (default active)."""
    from service.contracts import KIT_OLD_MODEL_ID

    server = Server(
        workdir=workdir,
        env=server_env(
            workdir, manifest=kit_assets.manifest, gallery_model_id=KIT_OLD_MODEL_ID, **extra
        ),
    )
    server.start()
    with server.client() as client:
        report = import_gallery(client, kit_assets.gallery_npz)
        assert report["faces_added"] == kit_assets.gallery_size
        versions = {
            recipe: upload_transformer(client, path, activate=recipe == "default")["version"]
            for recipe, path in kit_assets.transformers.items()
        }
    return server, versions


@pytest.fixture(scope="session")
def kit_server(
    kit_assets: KitAssets, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KitServer]:
    """The kit server on SQLite + embedded FAISS. Shared by the kit tests."""
    server = None
    try:
        server, versions = _start_kit_server(kit_assets, tmp_path_factory.mktemp("kit-server"))
        yield KitServer(server=server, versions=versions)
    finally:
        if server is not None:
            server.kill()


@pytest.fixture(scope="session")
def kit_server_milvus(
    kit_assets: KitAssets, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KitServer]:
    """The same, with FACEBRIDGE_VECTOR_STORE=milvus (Milvus Lite in the server process)."""
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    workdir = tmp_path_factory.mktemp("kit-server-milvus")
    server = None
    try:
        server, versions = _start_kit_server(
            kit_assets,
            workdir,
            FACEBRIDGE_VECTOR_STORE="milvus",
            FACEBRIDGE_MILVUS_URI=str(workdir / "milvus.db"),
        )
        yield KitServer(server=server, versions=versions)
    finally:
        if server is not None:
            server.kill()
