"""Storage-layer timings on a synthetic gallery, against raw FAISS measured in the same run.

    .venv/bin/python bench/storage.py [--rows 100000] [--dim 128]

In-process, SQLite file in a temporary directory, 1 FAISS thread. Prints a Markdown table:
each facebridge step and, where one exists, the raw FAISS operation it wraps (ratio = raw time /
facebridge time; 1.0 means no overhead).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from service.db.session import make_engine, make_session_factory, upgrade_database
from service.gallery.importer import import_gallery
from service.gallery.opening import open_gallery
from service.gallery.store import check_consistency, set_faiss_threads
from service.settings import ServiceSettings
from service.vectors import l2_normalize


def _timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    set_faiss_threads(1)

    work = Path(tempfile.mkdtemp(prefix="fb-storage-bench-"))
    url = f"sqlite:///{work}/fb.db"
    upgrade_database(url=url)
    settings = ServiceSettings(database_url=url, data_dir=work / "var", index_type="flat")
    session_factory = make_session_factory(make_engine(url))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.rows, args.dim)).astype(np.float32)
    external_ids = np.array([f"e{i // 3}" for i in range(args.rows)])
    np.savez(work / "gallery.npz", old=vectors, external_id=external_ids)
    queries = l2_normalize(rng.standard_normal((args.queries, args.dim)))

    sync, _ = open_gallery(session_factory=session_factory, settings=settings)

    def import_and_apply():  # type: ignore[no-untyped-def]
        report = import_gallery(
            session_factory=session_factory, source=work / "gallery.npz", settings=settings
        )
        sync.refresh()  # this process's index, from the change log
        return report

    report, t_import = _timed(import_and_apply)
    _, t_reimport = _timed(import_and_apply)
    _, t_save = _timed(sync.save)
    _, t_open = _timed(lambda: open_gallery(session_factory=session_factory, settings=settings))
    settings.index_file.unlink()
    (rebuilt_sync, _), t_rebuild = _timed(
        lambda: open_gallery(session_factory=session_factory, settings=settings)
    )
    rebuilt = rebuilt_sync.primary
    with session_factory() as session:
        consistency, t_check = _timed(lambda: check_consistency(session=session, index=rebuilt))
    _, t_search = _timed(lambda: [rebuilt.search(q[None, :], k=5) for q in queries])

    # The same work done by bare FAISS: the floor facebridge's wrappers are measured against.
    normalized = l2_normalize(vectors)
    raw = faiss.IndexIDMap2(faiss.IndexFlatIP(args.dim))
    _, t_raw_add = _timed(lambda: raw.add_with_ids(normalized, np.arange(args.rows)))
    _, t_raw_search = _timed(lambda: [raw.search(q[None, :], 5) for q in queries])

    def row(step: str, seconds: float, raw_seconds: float | None = None, note: str = "") -> str:
        ratio = f"{raw_seconds / seconds:.3f}" if raw_seconds else "-"
        raw_text = f"{raw_seconds:.4f}" if raw_seconds else "-"
        return f"| {step} | {seconds:.4f} | {raw_text} | {ratio} | {note} |"

    print(f"\nstorage bench: {args.rows:,} x {args.dim} vectors, SQLite, 1 FAISS thread\n")
    print("| step | facebridge s | raw FAISS s | ratio | note |")
    print("|---|---|---|---|---|")
    print(row("import (SQL + FAISS)", t_import, t_raw_add, f"{args.rows / t_import:,.0f} rows/s"))
    print(row("re-import (all skipped)", t_reimport, note=f"stored {report.faces_added:,} once"))
    print(row("save index (atomic)", t_save))
    print(row("open: load + tail the change log", t_open))
    print(row("open: rebuild from SQL", t_rebuild))
    print(row("consistency check", t_check, note=f"consistent={consistency.consistent}"))
    per_query = t_search / args.queries
    raw_per_query = t_raw_search / args.queries
    print(row("search k=5, one query", per_query, raw_per_query, "per query"))


if __name__ == "__main__":
    main()
