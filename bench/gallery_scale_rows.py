"""The result rows of bench/gallery_scale.py: one row per (N, engine, index), the rows of
configurations not run (extrapolated), recall/speed-up against the exact reference, the table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from gallery_data import GalleryGenerator


def result_row(engine, index, rows, build_s, rss, size, qps1, qps32, p50, startup_s, top, note):  # type: ignore[no-untyped-def]
    return {
        "rows": rows,
        "engine": engine,
        "index": index,
        "build_s": round(build_s, 2),
        "rss_mb": round(rss, 1),
        "bytes_per_vector": round(size / rows, 1),
        "qps_batch1": round(qps1, 1),
        "qps_batch32": round(qps32, 1),
        "p50_ms_batch1": round(p50, 3),
        "startup_s": round(startup_s, 2),
        "_top": top,
        "note": note,
    }


def extrapolated(config: str, rows: int, previous: list[dict], why: str) -> dict:
    """A row for a configuration not run at ``rows``: build time scaled from the largest run
    (n log n for graphs, n otherwise); the other figures are not guessed."""
    engine, index = config.split(":")
    engine = "milvus-lite" if engine == "milvus" else engine
    runs = [r for r in previous if r["engine"] == engine and r["index"] == index and r["rows"]]
    runs = [r for r in runs if r.get("build_s") is not None and r["rows"] < rows]
    row: dict[str, Any] = {"rows": rows, "engine": engine, "index": index, "recall_at_1": None}
    row.update(
        dict.fromkeys(
            ("speedup_vs_exact", "bytes_per_vector", "build_s", "qps_batch1", "startup_s")
        )
    )
    if runs:
        ref = max(runs, key=lambda r: r["rows"])
        scale = rows / ref["rows"]
        if "hnsw" in index.lower():
            scale *= math.log(rows) / math.log(ref["rows"])
        estimate = ref["build_s"] * scale
        row["build_s_extrapolated"] = round(estimate, 0)
        why += f"; build extrapolated from {ref['rows']:,} rows: ~{estimate / 60:.0f} min"
        if ref.get("bytes_per_vector"):
            row["bytes_per_vector_extrapolated"] = ref["bytes_per_vector"]
    row["note"] = f"NOT RUN: {why}"
    return row


def finish_row(row: dict, gen: GalleryGenerator, exact: np.ndarray, exact_qps1: float) -> dict:
    top = np.asarray(row.pop("_top"))
    exact = exact[: top.shape[0]]
    ok = gen.identity_of(np.maximum(top - 1, 0)) == gen.identity_of(exact)
    row["recall_at_1"] = round(float(np.mean(ok & (top > 0))), 4)
    row["speedup_vs_exact"] = round(row["qps_batch1"] / exact_qps1, 2)
    return row


def print_table(rows: list[dict], *, dim: int) -> None:
    raw = 4 * dim
    print(
        "| rows | engine | index | recall@1 | speed-up vs exact | bytes/vector (x raw) | "
        "RSS MB | build s | q/s batch 1 | q/s batch 32 | p50 ms | start-up s | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:

        def f(key: str, r: dict = r) -> str:
            value = r.get(key)
            return "-" if value is None else str(value)

        bpv = r.get("bytes_per_vector")
        ratio = f"{bpv:.0f} ({bpv / raw:.2f}x)" if bpv else "-"
        print(
            f"| {r['rows']:,} | {r['engine']} | {r['index']} | {f('recall_at_1')} | "
            f"{f('speedup_vs_exact')} | {ratio} | {f('rss_mb')} | {f('build_s')} | "
            f"{f('qps_batch1')} | {f('qps_batch32')} | {f('p50_ms_batch1')} | "
            f"{f('startup_s')} | {r.get('note', '')} |"
        )


def read_rows(path: Path) -> list[dict]:
    """Rows of a --json output (or of a log's JSON lines)."""
    text = path.read_text()
    try:
        rows = json.loads(text).get("rows")
        if isinstance(rows, list):
            return rows
    except ValueError:
        pass
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
