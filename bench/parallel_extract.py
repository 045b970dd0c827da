"""Shared by the bench scripts: several ``facebridge pairs extract`` processes in parallel."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def run_extractions(jobs: list[tuple[list[str], Path, Path]]) -> None:
    """Each job = (``pairs extract`` arguments without ``--output``, output, log file): one
    nice'd process per job, 1 ONNX Runtime thread each, all at once. A job whose output exists
    is skipped; the extraction itself is resumable (rerun after a stop)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for args, out, log_path in jobs:
        if out.exists():
            continue
        cmd = [
            "nice", "-n", "10", sys.executable, "-m", "service.cli", "pairs", "extract",
            *args, "--output", str(out), "--threads", "1",
        ]  # fmt: skip
        log = log_path.open("a")
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=log), log))
    for proc, log in procs:
        code = proc.wait()
        log.close()
        if code != 0:
            raise SystemExit(f"extraction failed (see {log.name})")


def extract_roots(
    roots: list[Path], *, work: Path, prefix: str, args: Callable[[Path], list[str]]
) -> list[Path]:
    """:func:`run_extractions` with one job per image root: ``args(root)`` are its arguments,
    the output is ``work/<prefix><root name>.npz`` (log ``work/extract_<prefix><name>.log``)."""
    jobs = [
        (args(root), work / f"{prefix}{root.name}.npz", work / f"extract_{prefix}{root.name}.log")
        for root in roots
    ]
    run_extractions(jobs)
    return [out for _, out, _ in jobs]
