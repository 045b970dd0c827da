"""Extraction throughput vs raw ONNX Runtime throughput of the same backbone, in the same run.

Extraction (``facebridge pairs extract --aligned``: read + decode JPEG crops, preprocess, run the
old and the new backbone, normalise, write chunks, join) is compared with the bare
``session.run`` time of the same backbone(s) on already preprocessed tensors, same batch size
and intra-op threads. Both sides are the kit's MobileFaceNet, so the raw reference runs it twice
per batch too. Extraction writes ``new_flip`` by default (the new side also embeds every crop
mirrored, in the same backbone call): the raw reference then runs the new backbone on the
mirrored batch as well (three runs per batch), so the ratio stays like-for-like; ``--no-new-flip``
measures both without it (two runs per batch). Without the kit, synthetic crops and a small
synthetic ONNX backbone are used (and the table says so). Target: ratio >= 0.9.

    .venv/bin/python bench/extraction.py [--images 1024] [--batch-size 64] [--threads 1] \
        [--no-new-flip]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def synthetic_setup(work: Path, n: int) -> tuple[Path, Path]:
    """Random 112x112 JPEG crops under work/crops/<id>/ and a small conv ONNX backbone."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(n):
        folder = work / "crops" / f"id{k // 4:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{k:06d}.jpg", quality=95)
    conv = numpy_helper.from_array(rng.standard_normal((32, 3, 3, 3)).astype(np.float32), "w1")
    proj = numpy_helper.from_array(rng.standard_normal((32, 128)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w2"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "synthetic",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 128])],
        initializer=[conv, proj],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(work / "synthetic.onnx"))
    manifest = work / "synthetic.json"
    manifest.write_text(
        json.dumps(
            {
                "model_id": "synthetic-conv",
                "file": "synthetic.onnx",
                "input_name": "input",
                "output_name": "embedding",
                "layout": "NCHW",
                "output_dim": 128,
            }
        )
    )
    return work / "crops", manifest


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=128,
        help="extraction chunk (a big set has many; decoding overlaps from the 2nd chunk on)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="best of N for both measurements")
    parser.add_argument(
        "--new-flip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="extraction writes new_flip (its default); the raw reference embeds the mirrors too",
    )
    return parser.parse_args(argv)


def _raw_round(
    backbone: Any, tensors: list[np.ndarray], mirrored: list[np.ndarray], *, new_flip: bool
) -> tuple[float, float]:
    """One raw ONNX Runtime round: (wall seconds, CPU seconds of this process)."""
    started, cpu = time.perf_counter(), time.process_time()
    for tensor, mirror in zip(tensors, mirrored, strict=True):
        backbone.run_tensor(tensor)
        backbone.run_tensor(tensor)
        if new_flip:
            backbone.run_tensor(mirror)
    return time.perf_counter() - started, time.process_time() - cpu


def _print_table(
    args: argparse.Namespace,
    *,
    source: str,
    n: int,
    raw: tuple[list[float], list[float]],
    extract: tuple[list[float], list[float]],
) -> None:
    """Best-of-N rates (wall and CPU) of the raw runs and of extraction, and their ratio."""
    (raw_seconds, raw_cpu), (extract_seconds, extract_cpu) = raw, extract
    raw_rate, extract_rate = n / min(raw_seconds), n / min(extract_seconds)
    raw_cpu_rate, extract_cpu_rate = n / min(raw_cpu), n / min(extract_cpu)
    runs = "old + new + mirrored new" if args.new_flip else "old + new"
    flag = "--new-flip" if args.new_flip else "--no-new-flip"
    print(
        f"source: {source}; {n} images; batch {args.batch_size}; threads {args.threads}; "
        f"chunk {args.chunk_size}; {flag}"
    )
    print("| measurement | images/s (wall) | images per CPU-second |\n|---|---|---|")
    print(f"| raw ONNX Runtime ({runs} backbone runs only) | {raw_rate:.1f} | {raw_cpu_rate:.1f} |")
    print(
        f"| facebridge pairs extract --aligned {flag} (end to end) | {extract_rate:.1f} "
        f"| {extract_cpu_rate:.1f} |"
    )
    print(
        f"| ratio extraction / raw (target >= 0.9) | {extract_rate / raw_rate:.3f} "
        f"| {extract_cpu_rate / raw_cpu_rate:.3f} |"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)

    from service.inference.backbone import OnnxBackbone, mirror_crops
    from service.inference.images import read_image_file
    from service.inference.preprocess import preprocess
    from service.kit import find_kit_dir, kit_backbone_manifest
    from training.data.extract import extract_pairs
    from training.data.samples import list_image_folder

    with tempfile.TemporaryDirectory(prefix="facebridge-bench-") as tmp:
        work = Path(tmp)
        kit = find_kit_dir()
        if kit is not None:
            crops_dir, manifest, source = (
                kit / "lfw" / "aligned",
                kit_backbone_manifest(kit),
                "kit aligned/ crops + kit MobileFaceNet",
            )
        else:
            crops_dir, manifest = synthetic_setup(work, args.images)
            source = "SYNTHETIC crops + synthetic conv backbone (kit absent)"
        records = list_image_folder(crops_dir, limit=args.images)
        n = len(records)

        # Raw ONNX Runtime: the same backbone twice per batch (old + new side), tensors ready;
        # with new_flip a third run on the mirrored batch (the new side's mirrors).
        backbone = OnnxBackbone(manifest, intra_op_threads=args.threads, batch_size=args.batch_size)
        crops = np.stack([read_image_file(crops_dir / r.relpath) for r in records])
        tensors = [
            preprocess(crops[i : i + args.batch_size], manifest=backbone.manifest)
            for i in range(0, n, args.batch_size)
        ]
        mirrored = [
            preprocess(mirror_crops(crops[i : i + args.batch_size]), manifest=backbone.manifest)
            for i in range(0, n, args.batch_size)
        ]
        # Interleaved (raw, extraction) rounds, best of each: the machine is shared.
        # CPU time (all threads of this process) is reported too: it does not depend on what
        # else the machine runs, wall time does.
        raw_seconds, extract_seconds, raw_cpu, extract_cpu = [], [], [], []
        for repeat in range(args.repeats):
            seconds, cpu_seconds = _raw_round(backbone, tensors, mirrored, new_flip=args.new_flip)
            raw_seconds.append(seconds)
            raw_cpu.append(cpu_seconds)
            started, cpu = time.perf_counter(), time.process_time()
            result = extract_pairs(
                images_dir=crops_dir,
                old=str(manifest),
                new=str(manifest),
                output=work / f"pairs{repeat}.npz",
                aligned=True,
                batch_size=args.batch_size,
                threads=args.threads,
                limit=n,
                chunk_size=args.chunk_size,
                progress=False,
                new_flip=args.new_flip,
            )
            extract_seconds.append(time.perf_counter() - started)
            extract_cpu.append(time.process_time() - cpu)
            assert result.rows == n, (result.rows, n)

    _print_table(
        args, source=source, n=n, raw=(raw_seconds, raw_cpu), extract=(extract_seconds, extract_cpu)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
