"""Large galleries, measured: FAISS index types and Milvus Lite index types at N rows.

    .venv/bin/python bench/gallery_scale.py --rows 1000000 [--json] [--index faiss:ivfpq ...]

Vectors: identity-structured synthetic (bench/gallery_data.py states the generator: fitted on the
kit's old-model statistics). Per (N, engine, index): build time, memory (process RSS growth and
the persisted index's bytes per vector), recall@1 of the returned IDENTITY against exact search,
queries/s at batch 1 and 32 (1 thread), p50 latency at batch 1, and start-up from the persisted
index (FAISS: FaissStore.load, as the service does; Milvus Lite: a fresh server on the same
file, load, first search). The exact reference (flat inner product) is measured in the same run.
Each configuration runs in a fresh process (its RSS growth is its own). Configurations too big
for this machine are not run but reported with an extrapolation from ``--extrapolate-from``
(a previous --json output at a smaller N).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from gallery_data import GalleryGenerator
from gallery_scale_rows import extrapolated, finish_row, print_table, read_rows, result_row

from service.gallery.engines.faiss import FaissStore
from service.gallery.engines.faiss_build import IndexParams
from service.gallery.store import set_faiss_threads

DEFAULT_INDEXES = (
    "faiss:flat,faiss:ivf,faiss:ivfsq,faiss:ivfpq,faiss:hnsw,"
    "milvus:FLAT,milvus:IVF_FLAT,milvus:IVF_SQ8,milvus:HNSW,milvus:HNSW_SQ"
)
# Largest N each configuration is run at here (2 cores, 24 GB, shared); beyond: extrapolated.
MAX_ROWS = {
    "faiss:hnsw": 2_000_000,
    "faiss:flat": 10_000_000,
    "milvus": 1_000_000,
    # Time only: Milvus Lite (pure Python) answered ~1 s a batch-1 query at 1M with IVF_FLAT
    # and IVF_SQ8 here, and FLAT took 133 ms a query at 100k.
    "milvus:HNSW": 100_000,
    "milvus:HNSW_SQ": 100_000,
    "milvus:FLAT": 100_000,
}
EXACT_QUERIES = 200


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def cached_exact_top1(
    gen: GalleryGenerator, queries: np.ndarray, rows: int, cache: Path | None
) -> np.ndarray:
    """:func:`exact_top1`, kept in ``cache`` (keyed by the queries and the generator)."""
    import hashlib

    if cache is None:
        return exact_top1(gen, queries, rows)
    key = hashlib.sha256(
        queries.tobytes() + gen.mu.tobytes() + gen.within.tobytes() + f"{rows}".encode()
    ).hexdigest()[:16]
    path = cache / f"exact-{rows}-{key}.npy"
    if path.exists():
        return np.load(path)
    cache.mkdir(parents=True, exist_ok=True)
    exact = exact_top1(gen, queries, rows)
    np.save(path, exact)
    return exact


def exact_top1(gen: GalleryGenerator, queries: np.ndarray, rows: int) -> np.ndarray:
    """Row of the best inner product per query, streamed over the generator's chunks."""
    best = np.full(queries.shape[0], -np.inf, np.float32)
    arg = np.zeros(queries.shape[0], np.int64)
    for start, vectors in gen.chunks(rows):
        scores = vectors @ queries.T
        top = scores.argmax(0)
        value = scores[top, np.arange(queries.shape[0])]
        better = value > best
        best[better], arg[better] = value[better], start + top[better]
    return arg


def time_queries(search, queries: np.ndarray, batch: int) -> tuple[float, float, np.ndarray]:  # type: ignore[no-untyped-def]
    """(queries/s, p50 ms per call, top-1 face ids) for calls of ``batch`` queries."""
    search(queries[:batch])  # warm-up
    laps, top = [], []
    for start in range(0, queries.shape[0], batch):
        t0 = time.perf_counter()
        hits = search(queries[start : start + batch])
        laps.append(time.perf_counter() - t0)
        top.extend(int(h.ids[0]) if h.ids.size else -1 for h in hits)
    return queries.shape[0] / sum(laps), 1000 * float(np.median(laps)), np.asarray(top)


def build_faiss(kind: str, gen: GalleryGenerator, rows: int, params: IndexParams) -> FaissStore:
    """Through the service's own FaissStore: IVF trains on an evenly strided sample of the gallery
    (the first chunks: rows are exchangeable), then every chunk is added."""
    store = FaissStore(dim=gen.dim, index_type=kind, params=params)
    if kind in ("ivf", "ivfsq", "ivfpq"):
        from service.gallery.engines.faiss_build import IVF_TRAIN_POINTS_PER_LIST, ideal_nlist

        sample = min(rows, ideal_nlist(rows, params) * IVF_TRAIN_POINTS_PER_LIST)
        store.train(gen.head(sample), rows=rows)
    for start, vectors in gen.chunks(rows):
        store.add(ids=np.arange(start, start + vectors.shape[0]) + 1, vectors=vectors)
    return store


def run_faiss(kind: str, gen: GalleryGenerator, rows: int, queries, params, work: Path) -> dict:  # type: ignore[no-untyped-def]
    if kind == "flat":  # the exact reference: ~rows x 0.04 us a query, so time fewer of them
        queries = queries[:EXACT_QUERIES]
    rss0 = rss_mb()
    t0 = time.perf_counter()
    store = build_faiss(kind, gen, rows, params)
    build_s = time.perf_counter() - t0
    rss = rss_mb() - rss0
    store_nprobe = getattr(store._index, "nprobe", None)
    path = store.save(work / f"{kind}.faiss")
    size = path.stat().st_size
    qps1, p50, top = time_queries(lambda q: store.search(q, k=1), queries, 1)
    qps32, _, _ = time_queries(lambda q: store.search(q, k=1), queries, 32)
    store = None  # freed before the start-up measurement
    gc.collect()
    t0 = time.perf_counter()
    loaded = FaissStore.load(path, params=params)
    startup_s = time.perf_counter() - t0
    sweep = []
    for nprobe in params_sweep(kind):  # the same index, other probe counts
        loaded._index.nprobe = nprobe
        qps, p50_sweep, top_sweep = time_queries(lambda q: loaded.search(q, k=1), queries, 1)
        sweep.append({"nprobe": nprobe, "qps": qps, "p50": p50_sweep, "top": top_sweep})
    loaded = None
    path.unlink()
    gc.collect()
    extra = f"nlist={_nlist(kind, rows, params)} nprobe={store_nprobe}" if "ivf" in kind else ""
    if kind == "hnsw":
        extra = f"M={params.hnsw_m} efSearch={params.hnsw_ef_search}"
    row = result_row(
        "faiss", kind, rows, build_s, rss, size, qps1, qps32, p50, startup_s, top, extra
    )
    row["_sweep"] = sweep
    return row


NPROBE_SWEEP: list[int] = []


def params_sweep(kind: str) -> list[int]:
    return NPROBE_SWEEP if kind in ("ivf", "ivfsq", "ivfpq") else []


def _nlist(kind: str, rows: int, params: IndexParams) -> int:
    from service.gallery.engines.faiss_build import ideal_nlist

    return ideal_nlist(rows, params)


def run_milvus(kind: str, gen: GalleryGenerator, rows: int, queries, params, work: Path) -> dict:  # type: ignore[no-untyped-def]
    from milvus_lite import server_manager_instance

    from service.gallery.engines.milvus import MilvusParams, MilvusStore, milvus_client

    uri = str(work / f"milvus-{kind}.db")
    nlist = _nlist("ivf", rows, params)
    mparams = MilvusParams(
        index_type=kind,
        nlist=nlist,
        nprobe=params.ivf_nprobe or 32,
        hnsw_m=params.hnsw_m,
        ef_search=params.hnsw_ef_search,
        ef_construction=params.hnsw_ef_construction,
        consistency_level="Strong",
    )
    rss0 = rss_mb()
    t0 = time.perf_counter()
    store = MilvusStore(client=milvus_client(uri), dim=gen.dim, space="bench", params=mparams)
    for start, vectors in gen.chunks(rows):
        store.add(ids=np.arange(start, start + vectors.shape[0]) + 1, vectors=vectors)
    store.client.flush(store.collection)
    _wait_indexed(store)
    build_s = time.perf_counter() - t0
    rss = rss_mb() - rss0
    qps1, p50, top = time_queries(lambda q: store.search(q, k=1), queries, 1)
    qps32, _, _ = time_queries(lambda q: store.search(q, k=1), queries, 32)
    store.close()
    server_manager_instance.release_server(uri)
    size = sum(p.stat().st_size for p in Path(uri).rglob("*") if p.is_file())
    gc.collect()
    t0 = time.perf_counter()
    again = MilvusStore(client=milvus_client(uri), dim=gen.dim, space="bench", params=mparams)
    again.search(queries[:1], k=1)
    startup_s = time.perf_counter() - t0
    again.close()
    server_manager_instance.release_server(uri)
    shutil.rmtree(uri, ignore_errors=True)
    extra = f"nlist={nlist} nprobe={mparams.nprobe}" if "IVF" in kind else ""
    if "HNSW" in kind:
        extra = f"M={params.hnsw_m} ef={params.hnsw_ef_search}"
    note = f"Milvus Lite {_milvus_lite_version()}; {extra}; bytes = data dir (raw + index)"
    return result_row(
        "milvus-lite", kind, rows, build_s, rss, size, qps1, qps32, p50, startup_s, top, note
    )


def _wait_indexed(store: Any, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = store.client.describe_index(store.collection, "vector")
        if int(info.get("pending_index_rows", 0)) == 0:
            return
        time.sleep(0.5)


def _milvus_lite_version() -> str:
    from importlib.metadata import version

    return version("milvus-lite")


def run_isolated(config: str, rows: int, queries: np.ndarray, params, per_identity: int, work):  # type: ignore[no-untyped-def]
    """One configuration in a fresh process: its RSS growth is the index's, not leftovers."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        args = (config, rows, queries, params, per_identity, work, list(NPROBE_SWEEP))
        return pool.apply(_run_one, args)


def _run_one(config: str, rows: int, queries, params, per_identity: int, work, sweep) -> dict:  # type: ignore[no-untyped-def]
    set_faiss_threads(1)
    NPROBE_SWEEP[:] = sweep
    engine, kind = config.split(":")
    gen = GalleryGenerator.fitted(per_identity=per_identity)
    run = run_faiss if engine == "faiss" else run_milvus
    return run(kind, gen, rows, queries, params, work)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--index", default=DEFAULT_INDEXES, help="engine:type, comma-separated")
    parser.add_argument("--nprobe", type=int, default=None, help="default: the service's")
    parser.add_argument("--nprobe-sweep", type=int, nargs="*", default=[], help="also these")
    parser.add_argument("--per-identity", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--extrapolate-from", type=Path, action="append", default=[])
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep exact ground truth")
    parser.add_argument(
        "--reference-from",
        type=Path,
        default=None,
        help="reuse the exact reference (faiss:flat) row of this --json output at the same N",
    )
    parser.add_argument(
        "--table-from", type=Path, nargs="*", default=None, help="only print these runs' table"
    )
    return parser.parse_args()


def _measure_n(  # type: ignore[no-untyped-def]
    rows: int,
    configs: list[str],
    *,
    args,
    gen: GalleryGenerator,
    params,
    previous: list[dict],
    results: list[dict],
    work: Path,
) -> None:
    """All configurations at N = rows, appended to results (faiss:flat first: the reference)."""
    queries, _ = gen.queries(args.queries, rows=rows)
    exact, exact_qps1 = None, None
    skipped_only = all(rows > MAX_ROWS.get(c, MAX_ROWS.get(c.split(":")[0], rows)) for c in configs)
    order = configs if skipped_only else ["faiss:flat"] + [c for c in configs if c != "faiss:flat"]
    for config in order:
        limit = MAX_ROWS.get(config, MAX_ROWS.get(config.split(":")[0]))
        if limit is not None and rows > limit:
            why = f"{rows:,} rows > {limit:,}: not run on this shared 2-core machine (time)"
            results.append(extrapolated(config, rows, previous + results, why))
            continue
        if exact is None:
            t0 = time.perf_counter()
            exact = cached_exact_top1(gen, queries, rows, args.cache_dir)
            log(f"{rows:,} rows: exact ground truth in {time.perf_counter() - t0:.1f}s")
        reused = [
            r
            for r in previous
            if config == "faiss:flat"
            and args.reference_from
            and r["rows"] == rows
            and (r["engine"], r["index"]) == ("faiss", "flat")
        ]
        if reused:  # measured before (same generator, same queries): not rebuilt
            row = {**reused[0], "note": f"exact reference, from {args.reference_from}"}
            row.pop("recall_at_1", None)
            row.pop("speedup_vs_exact", None)
            row["_top"] = exact[:EXACT_QUERIES] + 1
            exact_qps1 = row["qps_batch1"]
            results.append(finish_row(row, gen, exact, exact_qps1))
            continue
        log(f"{rows:,} rows: {config} ...")
        row = run_isolated(config, rows, queries, params, args.per_identity, work)
        if exact_qps1 is None:
            exact_qps1 = row["qps_batch1"]  # faiss:flat runs first: the reference
        sweep = row.pop("_sweep", [])
        results.append(finish_row(row, gen, exact, exact_qps1))
        log(f"  {json.dumps(results[-1])}")
        for point in sweep:  # same index, another nprobe: search figures only
            again = {k: v for k, v in results[-1].items() if k not in ("recall_at_1",)}
            again.update(qps_batch1=round(point["qps"], 1), p50_ms_batch1=round(point["p50"], 3))
            again.update(qps_batch32=None, _top=point["top"])
            again["note"] = f"nprobe={point['nprobe']} (the same index)"
            results.append(finish_row(again, gen, exact, exact_qps1))
            log(f"  {json.dumps(results[-1])}")
        if config == "faiss:flat" and config not in configs:
            results[-1]["note"] = "exact reference"


def main() -> None:
    args = _parse_args()
    if args.table_from:
        print_table([r for p in args.table_from for r in read_rows(p)], dim=128)
        return
    from service.settings import ServiceSettings

    defaults = ServiceSettings()
    params = IndexParams.from_settings(defaults)
    if args.nprobe is not None:
        params = IndexParams(**{**params.__dict__, "ivf_nprobe": args.nprobe})
    set_faiss_threads(2)  # the exact ground truth; each configuration runs with 1 thread
    gen = GalleryGenerator.fitted(per_identity=args.per_identity)
    NPROBE_SWEEP[:] = args.nprobe_sweep
    sources = [*args.extrapolate_from, *([args.reference_from] if args.reference_from else [])]
    previous = [r for p in sources for r in read_rows(p)]
    configs = [c.strip() for c in args.index.split(",") if c.strip()]
    work = Path(tempfile.mkdtemp(prefix="fb-scale-", dir=args.work_dir))
    results: list[dict] = []
    try:
        for rows in args.rows:
            _measure_n(
                rows,
                configs,
                args=args,
                gen=gen,
                params=params,
                previous=previous,
                results=results,
                work=work,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    generator = {"source": gen.source, "per_identity": gen.per_identity, "dim": gen.dim}
    if args.json:
        print(json.dumps({"generator": generator, "queries": args.queries, "rows": results}))
        return
    print(f"\ngallery scale bench: {args.queries} queries, 1 FAISS thread; {gen.source}\n")
    print_table(results, dim=gen.dim)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
