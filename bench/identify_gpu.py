"""Benchmark (prepared for a CUDA machine): /v1/identify on onnxruntime-gpu with and without
micro-batching, against the raw GPU backbone in the same run. Finishes in under 10 minutes.

    pip install -e '.[train,detect]' && pip uninstall -y onnxruntime && pip install -e '.[gpu]'
    apt-get install wrk        # else the Python client drives the load
    .venv/bin/python bench/identify_gpu.py [--seconds 6] [--concurrency 1 8 32] [--json]
    .venv/bin/python bench/identify_gpu.py --device cpu --threads 4 --concurrency 4 --seconds 2

For each server (micro-batching off, then ``FACEBRIDGE_MICRO_BATCH_MAX=--micro-batch``), started
with ``FACEBRIDGE_DEVICE=cuda`` and ``--threads`` inference threads (enough requests in flight
for batches to fill), it prints the rows of ``bench/identify.py`` (the same columns; the raw
reference is the CUDA backbone at one image per call, min(concurrency, threads) threads).
Not run on the 2-core build machine (no GPU there): no figures are recorded from it yet.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from identify import measure, print_table
from identify_load import python_client, write_wrk_bodies, wrk_available
from identify_server import load_gallery, prepare, start_server

PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=32, help="server inference threads")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--wait-ms", type=float, default=2.0)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: smoke run")
    args = parser.parse_args()
    args.rounds, args.batch, args.flip = 2, 1, True

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
    backbone = OnnxBackbone(
        kit / "models" / "mobilefacenet.json",
        providers=[PROVIDERS[args.device]],
        batch_size=64 if args.device == "cuda" else 1,
    )
    backbone.embed(crops[0][None], flip_average=True)
    reports = []
    with tempfile.TemporaryDirectory(prefix="facebridge-gpu-bench-") as tmp:
        workdir = Path(tmp)
        gallery, transformer = prepare(workdir, kit, recipe="default")
        wrk = (workdir / "wrk", write_wrk_bodies(workdir / "wrk", images))
        for micro_batch in (1, args.micro_batch):
            env = {"FACEBRIDGE_DEVICE": args.device, "FACEBRIDGE_MICRO_BATCH_MAX": str(micro_batch)}
            env["FACEBRIDGE_MICRO_BATCH_WAIT_MS"] = str(args.wait_ms)
            run_dir = workdir / f"mb{micro_batch}"
            run_dir.mkdir()
            server = start_server(run_dir, kit, threads=args.threads, flip=True, extra_env=env)
            try:
                two_way, vectors = load_gallery(server.url, gallery, transformer)
                python_client(server.url, images, concurrency=4, seconds=2.0)  # warm-up
                rows = []
                for concurrency in args.concurrency:
                    found = measure(
                        args,
                        server,
                        backbone,
                        crops,
                        images,
                        wrk if wrk_available() else None,
                        concurrency,
                    )
                    rows += [r for r in found if r["client"] == "wrk"] or found
            finally:
                server.stop()
            reports.append(
                {
                    "gallery_vectors": vectors,
                    "batch": 1,
                    "threads": args.threads,
                    "seconds": args.seconds,
                    "rounds": args.rounds,
                    "flip": True,
                    "queries": "flip-averaged queries",
                    "recipe": "default",
                    "scoring": "two-way fused re-ranking" if two_way else "forward-only",
                    "micro_batch": micro_batch,
                    "loadavg": "n/a",
                    "rows": rows,
                }
            )
    if args.json:
        print(json.dumps({"device": args.device, "reports": reports}))
    else:
        for report in reports:
            print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
