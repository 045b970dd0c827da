"""The /identify bench's server side: the kit gallery and transformer, a real uvicorn process
(optionally under py-spy), its CPU seconds from /proc. Used by ``bench/identify.py`` and
``bench/identify_gpu.py``; nothing runs at import."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "bench-admin-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare(workdir: Path, kit: Path, *, recipe: str) -> tuple[Path, Path]:
    """(legacy gallery .npz, transformer .onnx fitted with ``recipe``) in ``workdir``.

    The transformer is what an operator gets: ``facebridge transformer fit`` on the kit's
    pairs (bridge split, export parity check, the open-set calibration the default rule uses).
    """
    from service.contracts import load_pairs

    pairs_file = kit / "lfw" / "pairs.npz"
    evaluation = load_pairs(pairs_file).select_split("eval")
    gallery = workdir / "gallery.npz"
    np.savez(gallery, old=evaluation.old, external_id=evaluation.path, name=evaluation.name)
    transformer = workdir / "transformer.onnx"
    fit = [sys.executable, "-m", "service.cli", "transformer", "fit", "--pairs", str(pairs_file)]
    fit += ["--output", str(transformer), "--recipe", recipe]
    subprocess.run(fit, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
    return gallery, transformer


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), whatever the client is."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child_pid(pid: int, *, timeout_s: float = 30.0) -> int:
    """The first child of ``pid`` (the server py-spy started)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children = (task / "children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.05)
    raise SystemExit("py-spy did not start the server")


@dataclass
class BenchServer:
    process: subprocess.Popen
    pid: int  # the uvicorn process (py-spy's child under --profile)
    url: str

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_server(
    workdir: Path,
    kit: Path,
    *,
    threads: int,
    flip: bool,
    extra_env: dict[str, str] | None = None,
    profile: Path | None = None,
) -> BenchServer:
    """A uvicorn process serving the kit backbone, ready (``/readyz`` 200). ``profile``: run
    it under ``py-spy record --format raw`` writing there (folded stacks, idle excluded)."""
    import httpx

    port = free_port()
    env = {
        **os.environ,
        "FACEBRIDGE_DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}",
        "FACEBRIDGE_DATA_DIR": str(workdir / "var"),
        "FACEBRIDGE_BACKBONE_MANIFEST": str(kit / "models" / "mobilefacenet.json"),
        "FACEBRIDGE_GALLERY_MODEL_ID": "dlib-resnet-v1",
        "FACEBRIDGE_ADMIN_KEY": ADMIN_KEY,
        "FACEBRIDGE_DETECTOR": "none",
        "FACEBRIDGE_INFERENCE_THREADS": str(threads),
        "FACEBRIDGE_ORT_INTRA_OP_THREADS": "1",
        "FACEBRIDGE_FAISS_THREADS": "1",
        "FACEBRIDGE_FLIP_AVERAGE_QUERIES": "true" if flip else "false",
        "OMP_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    uvicorn = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory"]
    uvicorn += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    command = uvicorn
    if profile is not None:
        spy = Path(sys.executable).with_name("py-spy")
        command = [str(spy), "record", "--format", "raw", "--rate", "200", "--nonblocking"]
        command += ["-o", str(profile), "--", *uvicorn]
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    pid = _child_pid(process.pid) if profile is not None else process.pid
    server = BenchServer(process=process, pid=pid, url=f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit((workdir / "server.log").read_text()[-3000:])
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("server did not become ready")


def load_gallery(url: str, gallery: Path, transformer: Path) -> tuple[bool, int]:
    """Import the legacy gallery and activate the transformer: (two-way?, index vectors)."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as client:
        return post_gallery(client, gallery, transformer)


def post_gallery(client: Any, gallery: Path, transformer: Path) -> tuple[bool, int]:
    """:func:`load_gallery` through ``client`` (an httpx client or Starlette's TestClient)."""
    headers = {"X-API-Key": ADMIN_KEY}
    with gallery.open("rb") as fh:
        client.post(
            "/v1/gallery/import", files={"file": ("g.npz", fh)}, headers=headers
        ).raise_for_status()
    with transformer.open("rb") as fh:
        uploaded = client.post(
            "/v1/admin/transformers",
            files={"file": ("t.onnx", fh)},
            data={"activate": "true"},
            headers=headers,
        )
    uploaded.raise_for_status()
    stats = client.get("/v1/gallery/stats", headers=headers).json()
    return bool(uploaded.json().get("two_way", False)), int(stats["index_vectors"])
