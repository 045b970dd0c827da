"""Load for the /identify bench: the raw backbone reference, a Python (httpx) client and a
native one (``wrk`` + ``bench/identify_wrk.lua``, ``apt-get install wrk``). Each returns a
:class:`Slice`; nothing runs at import."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from identify_server import ADMIN_KEY

WRK_SCRIPT = Path(__file__).with_name("identify_wrk.lua")


@dataclass
class Slice:
    """One measured slice: answered images, seconds, failures, latencies (ms) or wrk's own
    percentiles when the client does not report each request."""

    images: int = 0
    seconds: float = 0.0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    percentiles_ms: list[tuple[float, float]] = field(default_factory=list)  # (p50, p99)

    def add(self, other: Slice) -> None:
        self.images += other.images
        self.seconds += other.seconds
        self.failed += other.failed
        self.latencies_ms += other.latencies_ms
        self.percentiles_ms += other.percentiles_ms

    def p50_p99(self) -> tuple[float, float]:
        if self.latencies_ms:
            ms = np.asarray(self.latencies_ms)
            return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
        if self.percentiles_ms:  # wrk slices: the median slice's p50, the worst slice's p99
            p50s, p99s = zip(*self.percentiles_ms, strict=True)
            return float(np.median(p50s)), float(max(p99s))
        return float("nan"), float("nan")


def raw_backbone(
    backbone: Any, crops: list[np.ndarray], *, threads: int, seconds: float, flip: bool
) -> Slice:
    """The backbone alone: ``threads`` threads, one image per call (and its mirror in the same
    run when ``flip``), one session."""
    counts = [0] * threads
    stop = threading.Event()

    def work(slot: int) -> None:
        i = slot
        while not stop.is_set():
            backbone.embed(crops[i % len(crops)][None], flip_average=flip)
            counts[slot] += 1
            i += threads

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return Slice(images=sum(counts), seconds=time.perf_counter() - start)


def python_client(
    url: str, images: list[bytes], *, concurrency: int, seconds: float, batch: int = 1
) -> Slice:
    """Single- (or ``batch``-) image /identify at ``concurrency``: one asyncio httpx client
    with ``concurrency`` connections (16 Python threads would spend the shared cores on the
    GIL instead of on the server)."""
    import asyncio

    import httpx

    out = Slice()

    async def worker(client: httpx.AsyncClient, slot: int, stop_at: float) -> None:
        i = slot
        while time.perf_counter() < stop_at:
            files = [
                ("image", ("probe.jpg", images[(i + j) % len(images)], "image/jpeg"))
                for j in range(batch)
            ]
            i += concurrency * batch
            start = time.perf_counter()
            response = await client.post(
                "/v1/identify", files=files, headers={"X-API-Key": ADMIN_KEY}
            )
            if response.status_code == 200:
                out.latencies_ms.append(1000.0 * (time.perf_counter() - start))
                out.images += batch
            else:
                out.failed += 1

    async def run() -> float:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:
            start = time.perf_counter()
            stop_at = start + seconds
            await asyncio.gather(*(worker(client, c, stop_at) for c in range(concurrency)))
            return time.perf_counter() - start

    out.seconds = asyncio.run(run())
    return out


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def write_wrk_bodies(directory: Path, images: list[bytes]) -> str:
    """One multipart body per image (one part named ``image``) in ``directory``; the boundary."""
    boundary = f"facebridge-{uuid.uuid4().hex}"
    directory.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(images):
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="probe-{i}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        (directory / f"body-{i}.bin").write_bytes(head + data + f"\r\n--{boundary}--\r\n".encode())
    return boundary


def wrk_client(url: str, bodies: Path, boundary: str, *, concurrency: int, seconds: float) -> Slice:
    """``wrk`` with ``concurrency`` connections on one thread (a native client: its CPU is not
    Python's), for ``seconds`` (whole seconds, at least 1)."""
    env = {
        **os.environ,
        "FACEBRIDGE_WRK_BODIES": str(bodies),
        "FACEBRIDGE_WRK_BOUNDARY": boundary,
        "FACEBRIDGE_WRK_KEY": ADMIN_KEY,
    }
    duration = max(1, round(seconds))
    command = ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{duration}s"]
    command += ["--timeout", "60s", "-s", str(WRK_SCRIPT), url]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    line = [s for s in done.stdout.splitlines() if s.startswith("{")][-1]
    report = json.loads(line)
    failed = int(report["errors"]) + int(report["non_2xx"])
    return Slice(
        images=int(report["requests"]) - int(report["non_2xx"]),
        seconds=report["duration_us"] / 1e6,
        failed=failed,
        percentiles_ms=[(report["p50_us"] / 1000.0, report["p99_us"] / 1000.0)],
    )
