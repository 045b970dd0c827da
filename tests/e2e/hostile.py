"""Hostile inputs for a real server, and the server's memory while it handles them (shared by
tests/e2e/test_hostile_uploads.py and bench/hostile_uploads.py)."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIB = 1024 * 1024


@dataclass
class RssPeak:
    baseline: int
    peak: int

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.baseline) / MIB


@contextmanager
def rss_peak(pid: int, *, every_s: float = 0.01) -> Iterator[RssPeak]:
    """The process's resident memory: its value on entry and its peak until exit (sampled)."""
    import psutil

    process = psutil.Process(pid)
    result = RssPeak(baseline=process.memory_info().rss, peak=0)
    result.peak = result.baseline
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                result.peak = max(result.peak, process.memory_info().rss)
            except psutil.Error:
                return
            stop.wait(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        time.sleep(5 * every_s)
        stop.set()
        thread.join()


def npz_bomb(path: Path, *, rows: int, dim: int) -> Path:
    """An .npz whose ``old`` declares and holds ``rows`` x ``dim`` float32 zeros, deflated:
    1 GiB of vectors takes about 1 MB on disk."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("old.npy", "w", force_zip64=True) as out:
            header = {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)}
            np.lib.format.write_array_header_1_0(out, header)
            block = bytes(dim * 4 * 8192)
            for _ in range(rows // 8192):
                out.write(block)
            out.write(bytes(dim * 4 * (rows % 8192)))
        names = io.BytesIO()
        np.save(names, np.asarray(["x"]).repeat(rows), allow_pickle=False)
        archive.writestr("name.npy", names.getvalue())
    return path


def huge_png(side: int) -> bytes:
    """A ``side`` x ``side`` RGB PNG of soft gradients: a few hundred KB that decode to
    ``3 * side**2`` bytes (6000 px: ~140 KB -> 108 MB)."""
    from PIL import Image

    ramp = np.linspace(0, 255, side, dtype=np.float32)
    small = np.stack(
        [
            np.add.outer(ramp, ramp) / 2,
            np.add.outer(ramp, ramp[::-1]) / 2,
            ramp[None, :] + 0 * ramp[:, None],
        ],
        axis=-1,
    )
    buf = io.BytesIO()
    Image.fromarray(small.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def timed(run: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start
