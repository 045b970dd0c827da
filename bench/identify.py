"""Benchmark: /v1/identify throughput and latency over HTTP vs raw ONNX Runtime, same run.

Starts a real uvicorn process (kit MobileFaceNet backbone, the kit's eval gallery as legacy
vectors, a transformer fitted on the bridge split with the default recipe: two-way, so identify
re-ranks with fused scores), then for each client concurrency (1, 4, 16 by default) sends
single-image /identify requests with aligned kit crops for a fixed time and reports images/s,
p50 and p99 latency, and the server process's CPU per answered image (from /proc/<pid>/stat:
independent of the client). Two load generators: the Python client (httpx, asyncio; it shares
the cores with the server) and, with ``--wrk``, the native ``wrk`` (``apt-get install wrk``)
with ``bench/identify_wrk.lua`` posting multipart bodies. The reference is the backbone alone
(``OnnxBackbone.embed`` on pre-decoded crops, doing the service's backbone work: with
flip-averaged queries, the default, each image and its mirror in one run, else batch 1) run by
min(concurrency, inference threads) threads, measured in this same run in slices interleaved
with the HTTP slices; the table prints the ratios.

    .venv/bin/python bench/identify.py                  # ~1-2 minutes
    .venv/bin/python bench/identify.py --seconds 6 --concurrency 4 --wrk --json
    .venv/bin/python bench/identify.py --no-flip        # plain queries (one crop per image)
    .venv/bin/python bench/identify.py --micro-batch 4  # FACEBRIDGE_MICRO_BATCH_MAX=4
    .venv/bin/python bench/identify.py --concurrency 4 --seconds 20 --profile /tmp/p.txt

``--profile``: the server runs under py-spy (``pip install py-spy``, the ``bench`` extra) and
``bench/profile_stages.py`` prints where the server's CPU per image goes.
Needs the kit (FACEBRIDGE_KIT_DIR or ../shared/kit) and the train extra (to fit the ridge map).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from identify_load import (
    Slice,
    python_client,
    raw_backbone,
    write_wrk_bodies,
    wrk_available,
    wrk_client,
)
from identify_server import BenchServer, load_gallery, prepare, start_server


def measure(
    args: argparse.Namespace,
    server: BenchServer,
    backbone: Any,
    crops: list[Any],
    images: list[bytes],
    wrk: tuple[Path, str] | None,
    concurrency: int,
) -> list[dict[str, Any]]:
    """Rows for one concurrency: one per load generator, each against the raw slices
    interleaved with it (a change in the machine's load hits both)."""
    clients = ["python"] + (["wrk"] if wrk is not None else [])
    raw = {c: Slice() for c in clients}
    raw_cpu = dict.fromkeys(clients, 0.0)
    http = {c: Slice() for c in clients}
    server_cpu = dict.fromkeys(clients, 0.0)
    part = args.seconds / args.rounds
    for _ in range(args.rounds):
        for client in clients:
            cpu = time.process_time()
            threads = min(concurrency, args.threads)
            raw[client].add(
                raw_backbone(backbone, crops, threads=threads, seconds=part, flip=args.flip)
            )
            raw_cpu[client] += time.process_time() - cpu
            cpu = server.cpu_seconds()
            if client == "python":
                run = python_client(
                    server.url, images, concurrency=concurrency, seconds=part, batch=args.batch
                )
            else:
                run = wrk_client(server.url, *wrk, concurrency=concurrency, seconds=part)
            server_cpu[client] += server.cpu_seconds() - cpu
            http[client].add(run)
    rows = []
    for client in clients:
        p50, p99 = http[client].p50_p99()
        rate = http[client].images / http[client].seconds
        raw_rate = raw[client].images / raw[client].seconds
        rows.append(
            {
                "concurrency": concurrency,
                "client": client,
                "http_images_per_s": round(rate, 2),
                "raw_images_per_s": round(raw_rate, 2),
                "ratio": round(rate / raw_rate, 3),
                "server_cpu_ms_per_image": round(
                    1000.0 * server_cpu[client] / max(1, http[client].images), 2
                ),
                "raw_cpu_ms_per_image": round(
                    1000.0 * raw_cpu[client] / max(1, raw[client].images), 2
                ),
                "p50_ms": round(p50, 2),
                "p99_ms": round(p99, 2),
                "failed": http[client].failed,
            }
        )
    return rows


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\n/v1/identify, kit MobileFaceNet, {report['gallery_vectors']} gallery vectors, "
        f"{report['batch']} image(s) per request, server inference threads = "
        f"{report['threads']}, ORT intra-op threads = 1, {os.cpu_count()} CPUs, "
        f"{report['seconds']:.0f} s per row, load average {report['loadavg']}\n"
        f"mode: {report['queries']}; recipe {report['recipe']!r}, {report['scoring']}; "
        f"micro-batch max {report['micro_batch']}; server env {report.get('server_env') or '-'}"
    )
    print(
        "| concurrency | client | HTTP images/s | p50 ms | p99 ms | failed | raw ORT images/s "
        "| ratio | server CPU ms/image | raw ORT CPU ms/image | CPU ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        cpu_ratio = r["server_cpu_ms_per_image"] / max(r["raw_cpu_ms_per_image"], 1e-9)
        print(
            f"| {r['concurrency']} | {r['client']} | {r['http_images_per_s']:.1f} "
            f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['failed']} "
            f"| {r['raw_images_per_s']:.1f} | {r['ratio']:.2f} "
            f"| {r['server_cpu_ms_per_image']:.1f} | {r['raw_cpu_ms_per_image']:.1f} "
            f"| {cpu_ratio:.2f} |"
        )
    print(
        "raw ORT = OnnxBackbone.embed on pre-decoded crops, one image per call "
        f"({'+ its mirror in the same run' if report['flip'] else 'batch 1'}), min(concurrency, "
        f"server threads) threads, in {report['rounds']} slices interleaved with each client's; "
        "server CPU from /proc/<server pid>/stat per answered image"
    )


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--wrk", action="store_true", help="also load with wrk (native)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--micro-batch", type=int, default=1, help="FACEBRIDGE_MICRO_BATCH_MAX (1: off)"
    )
    parser.add_argument("--micro-batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of the server here")
    parser.add_argument(
        "--server-env",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="extra server settings, e.g. FACEBRIDGE_FACE_CHECK=off",
    )
    return parser


def main() -> int:
    args = _parser().parse_args()
    from service.inference.backbone import OnnxBackbone
    from service.inference.images import read_image_file
    from service.kit import find_kit_dir

    kit = find_kit_dir()
    if kit is None:
        print("sample kit absent (set FACEBRIDGE_KIT_DIR): nothing to benchmark", file=sys.stderr)
        return 2
    if args.wrk and not wrk_available():
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    aligned = sorted((kit / "lfw" / "aligned").rglob("*.jpg"))[: args.images]
    images = [p.read_bytes() for p in aligned]
    crops = [read_image_file(p) for p in aligned]
    env = dict(item.split("=", 1) for item in args.server_env)
    if args.micro_batch > 1:  # else the server's defaults
        env["FACEBRIDGE_MICRO_BATCH_MAX"] = str(args.micro_batch)
        env["FACEBRIDGE_MICRO_BATCH_WAIT_MS"] = str(args.micro_batch_wait_ms)
    with tempfile.TemporaryDirectory(prefix="facebridge-bench-") as tmp:
        workdir = Path(tmp)
        gallery, transformer = prepare(workdir, kit, recipe=args.recipe)
        server = start_server(
            workdir, kit, threads=args.threads, flip=args.flip, extra_env=env, profile=args.profile
        )
        try:
            two_way, vectors = load_gallery(server.url, gallery, transformer)
            wrk = None
            if args.wrk:
                wrk = (workdir / "wrk", write_wrk_bodies(workdir / "wrk", images))
            python_client(server.url, images, concurrency=2, seconds=1.0)  # warm-up
            backbone = OnnxBackbone(kit / "models" / "mobilefacenet.json", intra_op_threads=1)
            backbone.embed(crops[0][None], flip_average=args.flip)
            rows = []
            for concurrency in args.concurrency:
                rows += measure(args, server, backbone, crops, images, wrk, concurrency)
        finally:
            server.stop()
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "gallery_vectors": vectors,
        "batch": args.batch,
        "threads": args.threads,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "flip": args.flip,
        "queries": "flip-averaged queries (2 crops per image, one ORT run)"
        if args.flip
        else "plain queries (1 crop per image)",
        "recipe": args.recipe,
        "scoring": "two-way fused re-ranking" if two_way else "forward-only scoring",
        "micro_batch": args.micro_batch,
        "server_env": env,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    if args.profile is not None:
        print(f"profile: .venv/bin/python bench/profile_stages.py {args.profile}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
