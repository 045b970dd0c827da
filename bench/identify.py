"""Benchmark: /v1/identify throughput and latency over HTTP vs raw ONNX Runtime, same run.

Starts a real uvicorn process (kit MobileFaceNet backbone, the kit's eval gallery as legacy
vectors, a transformer fitted on the bridge split with the default recipe: two-way, so identify
re-ranks with fused scores), then for each client concurrency (1, 4, 16 by default) sends
single-image /identify requests with aligned kit crops for a fixed time and reports images/s,
p50 and p99 latency. The reference is the backbone alone (``OnnxBackbone.embed`` on pre-decoded
crops, doing the service's backbone work: with flip-averaged queries, the default, each image and
its mirror in one run, else batch 1) run by as many threads as the server can use at that
concurrency (min(concurrency, inference threads)), measured in this same run on this same
machine in slices interleaved with the HTTP slices; the table prints the ratio.

    .venv/bin/python bench/identify.py                  # ~1-2 minutes
    .venv/bin/python bench/identify.py --seconds 5 --concurrency 1 4 16 --threads 2
    .venv/bin/python bench/identify.py --no-flip        # plain queries (one crop per image)

Needs the kit (FACEBRIDGE_KIT_DIR or ../shared/kit) and the train extra (to fit the ridge map).
Client and server share the machine's cores: the client's own CPU use is part of the figure.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "bench-admin-key-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prepare(workdir: Path, kit: Path, *, recipe: str) -> tuple[Path, Path]:
    """(legacy gallery .npz, transformer .onnx fitted with ``recipe``) in ``workdir``."""
    from service.contracts import KIT_NEW_MODEL_ID, KIT_OLD_MODEL_ID, load_pairs
    from training.transformers.export import default_metadata, export_transformer
    from training.transformers.fit import fit_transformer

    pairs = load_pairs(kit / "lfw" / "pairs.npz")
    evaluation = pairs.select_split("eval")
    gallery = workdir / "gallery.npz"
    np.savez(gallery, old=evaluation.old, external_id=evaluation.path, name=evaluation.name)
    fitted = fit_transformer(pairs=pairs.select_split("bridge"), recipe=recipe, progress=False)
    transformer = workdir / "transformer.onnx"
    export_transformer(
        fitted,
        transformer,
        metadata=default_metadata(
            fitted, source_model=KIT_NEW_MODEL_ID, target_model=KIT_OLD_MODEL_ID
        ),
    )
    return gallery, transformer


def _raw_backbone_run(
    backbone: Any, crops: list[np.ndarray], *, threads: int, seconds: float, flip: bool
) -> tuple[int, float]:
    """(images, seconds) of the backbone alone: ``threads`` threads, one image per call (and its
    mirror in the same run when ``flip``), one session."""
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
    return sum(counts), time.perf_counter() - start


def _http_run(
    url: str, images: list[bytes], *, concurrency: int, seconds: float, batch: int = 1
) -> tuple[list[float], int, float]:
    """(latencies s, failures, seconds) for single-image /identify at ``concurrency``.

    One asyncio client with ``concurrency`` connections: a light load generator (16 Python
    threads would spend the shared cores on the GIL instead of on the server).
    """
    import asyncio

    import httpx

    latencies: list[float] = []
    failures = 0

    async def worker(client: httpx.AsyncClient, slot: int, stop_at: float) -> None:
        nonlocal failures
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
                latencies.append(time.perf_counter() - start)
            else:
                failures += 1

    async def run() -> float:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:
            start = time.perf_counter()
            stop_at = start + seconds
            await asyncio.gather(*(worker(client, c, stop_at) for c in range(concurrency)))
            return time.perf_counter() - start

    elapsed = asyncio.run(run())
    return latencies, failures, elapsed


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_server(
    workdir: Path, kit: Path, *, threads: int, flip: bool
) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
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
    }
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "service.app:create_app",
            "--factory",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit((workdir / "server.log").read_text()[-3000:])
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("server did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=2, help="server inference threads")
    parser.add_argument("--images", type=int, default=256, help="distinct probe crops")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved slices per row")
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument(
        "--no-flip",
        dest="flip",
        action="store_false",
        help="plain queries (FACEBRIDGE_FLIP_AVERAGE_QUERIES=false); default: flip-averaged",
    )
    parser.add_argument("--recipe", default="default", help="transformer recipe to fit")
    args = parser.parse_args()

    import httpx

    from service.inference.backbone import OnnxBackbone
    from service.inference.images import read_image_file
    from service.kit import find_kit_dir

    kit = find_kit_dir()
    if kit is None:
        print("sample kit absent (set FACEBRIDGE_KIT_DIR): nothing to benchmark", file=sys.stderr)
        return 2
    aligned = sorted((kit / "lfw" / "aligned").rglob("*.jpg"))[: args.images]
    images = [p.read_bytes() for p in aligned]
    crops = [read_image_file(p) for p in aligned]

    with tempfile.TemporaryDirectory(prefix="facebridge-bench-") as tmp:
        workdir = Path(tmp)
        gallery, transformer = _prepare(workdir, kit, recipe=args.recipe)
        process, url = _start_server(workdir, kit, threads=args.threads, flip=args.flip)
        try:
            headers = {"X-API-Key": ADMIN_KEY}
            with httpx.Client(base_url=url, timeout=120) as client:
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
                two_way = bool(uploaded.json().get("two_way", False))
                stats = client.get("/v1/gallery/stats", headers=headers).json()
            _http_run(url, images, concurrency=2, seconds=1.0)  # warm-up
            backbone = OnnxBackbone(kit / "models" / "mobilefacenet.json", intra_op_threads=1)
            backbone.embed(crops[0][None], flip_average=args.flip)
            rows = []
            for concurrency in args.concurrency:
                # Interleave short slices of both so a change in the machine's load hits both.
                raw_images, raw_seconds, raw_cpu, http_seconds, server_cpu, failed = (
                    0,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    0,
                )
                latencies: list[float] = []
                for _ in range(args.rounds):
                    cpu_before = time.process_time()
                    n, t = _raw_backbone_run(
                        backbone,
                        crops,
                        threads=min(concurrency, args.threads),
                        seconds=args.seconds / args.rounds,
                        flip=args.flip,
                    )
                    raw_cpu += time.process_time() - cpu_before
                    raw_images, raw_seconds = raw_images + n, raw_seconds + t
                    cpu_before = _process_cpu_seconds(process.pid)
                    lat, bad, t = _http_run(
                        url,
                        images,
                        concurrency=concurrency,
                        seconds=args.seconds / args.rounds,
                        batch=args.batch,
                    )
                    server_cpu += _process_cpu_seconds(process.pid) - cpu_before
                    latencies += lat
                    failed, http_seconds = failed + bad, http_seconds + t
                ms = np.array(latencies) * 1000.0
                answered = len(latencies) * args.batch
                rate, raw = answered / http_seconds, raw_images / raw_seconds
                rows.append(
                    (
                        concurrency,
                        rate,
                        float(np.percentile(ms, 50)),
                        float(np.percentile(ms, 99)),
                        failed,
                        raw,
                        rate / raw,
                        1000.0 * server_cpu / max(1, answered),
                        1000.0 * raw_cpu / max(1, raw_images),
                    )
                )
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()

    queries = (
        "flip-averaged queries (2 crops per image, one ORT run)"
        if args.flip
        else "plain queries (1 crop per image)"
    )
    scoring = "two-way fused re-ranking" if two_way else "forward-only scoring"
    print(
        f"\n/v1/identify, kit MobileFaceNet, {stats['index_vectors']} gallery vectors, "
        f"{args.batch} image(s) per request, server inference threads = {args.threads}, "
        f"ORT intra-op threads = 1, {os.cpu_count()} CPUs, {args.seconds:.0f} s per row\n"
        f"mode: {queries}; recipe {args.recipe!r}, {scoring}"
    )
    print(
        "| concurrency | HTTP images/s | p50 ms/request | p99 ms/request | failed "
        "| raw ORT images/s | ratio "
        "| server CPU ms/image | raw ORT CPU ms/image |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for concurrency, rate, p50, p99, failed, raw, ratio, cpu_http, cpu_raw in rows:
        print(
            f"| {concurrency} | {rate:.1f} | {p50:.1f} | {p99:.1f} | {failed} | {raw:.1f} "
            f"| {ratio:.2f} | {cpu_http:.1f} | {cpu_raw:.1f} |"
        )
    print(
        "raw ORT = OnnxBackbone.embed on pre-decoded crops, one image per call "
        f"({'+ its mirror in the same run' if args.flip else 'batch 1'}), min(concurrency, "
        f"server threads) threads, measured in this run in {args.rounds} slices interleaved "
        "with HTTP; "
        "CPU columns: the server process's CPU time per answered image vs the raw run's"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
