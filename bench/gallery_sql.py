"""SQL at scale and replica sync cost, on PostgreSQL (a fresh database per size).

    .venv/bin/python bench/gallery_sql.py --rows 10000 100000 1000000 [--changes 10000]
    .venv/bin/python bench/gallery_sql.py --lookup-rows 10000000   # identity lookup at 10M

Per gallery size N: (1) streaming import of N rows from an .npz (rows/s; the process's RSS
sampled every 0.2 s: peak and growth); (2) ``/v1/gallery/stats``'s queries (sharded counters)
against the old COUNT(*) + GROUP BY; (3) replica sync: replica B holds the N-face gallery,
replica A enrols ``--changes`` faces (one transaction each, as the API does), then B's time
to apply them by tailing the change log, against ONE full id-set reconcile at size N (what
every change cost each replica before). ``--lookup-rows`` fills faces server-side
(generate_series) and times the per-request identity lookup (face ids -> identities, one
indexed query) for 5 and 50 candidates. Vectors: bench/gallery_data.py's generator.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).parent))
from gallery_data import GalleryGenerator

from service.db.models import Face, Identity
from service.db.session import make_engine, make_session_factory, upgrade_database
from service.gallery.importer import import_gallery
from service.gallery.opening import open_gallery
from service.gallery.store import gallery_stats, reconcile, set_faiss_threads
from service.identities import add_faces, create_identity, identities_for_faces
from service.settings import ServiceSettings

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class RssSampler:
    """Samples this process's RSS every 0.2 s in a thread (peak and start)."""

    def __init__(self) -> None:
        self.start_mb = self.peak_mb = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def fresh_database(base_url: str) -> tuple[str, sa.Engine]:
    name = f"fb_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
    upgrade_database(url=url)
    return url, admin


def drop_database(admin: sa.Engine, url: str) -> None:
    name = make_url(url).database
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def write_npz(path: Path, gen: GalleryGenerator, rows: int) -> None:
    vectors = gen.head(rows)
    names = np.array([f"person-{r // gen.per_identity:08d}" for r in range(rows)])
    np.savez(path, old=vectors, external_id=names)


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def median_time(fn, repeat: int = 21) -> float:  # type: ignore[no-untyped-def]
    """Median seconds of ``repeat`` calls (after one warm-up call)."""
    fn()
    return float(np.median([timed(fn)[1] for _ in range(repeat)]))


def measure_size(rows: int, changes: int, args: argparse.Namespace, work: Path) -> dict:
    gen = GalleryGenerator.fitted()
    npz = work / f"g-{rows}.npz"
    write_npz(npz, gen, rows)
    url, admin = fresh_database(args.database_url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    settings = ServiceSettings(database_url=url, data_dir=work / f"var-{rows}", index_type="flat")
    try:
        with RssSampler() as rss:
            report, import_s = timed(
                lambda: import_gallery(session_factory=factory, source=npz, settings=settings)
            )
        assert report.faces_added == rows
        with factory() as session:
            stats_s = median_time(lambda: gallery_stats(session=session, index=None))
            old_stats_s = median_time(lambda: _old_stats(session))
        replica_b, _ = open_gallery(session_factory=factory, settings=settings)
        with factory() as session:
            person = create_identity(session=session, name="new arrivals").id
        fresh = gen.queries(changes, rows=rows)[0]
        _, enrol_s = timed(lambda: _enrol_each(factory, person, fresh))
        applied, tail_s = timed(replica_b.refresh)
        assert applied == changes and replica_b.primary.ntotal == rows + changes
        with factory() as session:
            result, reconcile_s = timed(lambda: reconcile(session=session, index=replica_b.primary))
        assert result.consistent
        replica_b.close()
    finally:
        engine.dispose()
        drop_database(admin, url)
        admin.dispose()
        npz.unlink(missing_ok=True)
    return {
        "rows": rows,
        "import_rows_per_s": rows / import_s,
        "import_rss_growth_mb": rss.peak_mb - rss.start_mb,
        "stats_ms": 1000 * stats_s,
        "old_stats_ms": 1000 * old_stats_s,
        "changes": changes,
        "enrol_per_s": changes / enrol_s,
        "tail_s": tail_s,
        "tail_us_per_change": 1e6 * tail_s / changes,
        "reconcile_s": reconcile_s,
    }


def _old_stats(session) -> None:  # type: ignore[no-untyped-def]
    """What /v1/gallery/stats ran before: counts over the tables (plus the full id compare)."""
    session.scalar(select(func.count()).select_from(Identity))
    session.execute(select(Face.source, func.count()).group_by(Face.source)).all()


def _enrol_each(factory, person: int, vectors: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """One transaction per enrolment (what POST /v1/identities/{id}/faces does)."""
    for vector in vectors:
        with factory() as session:
            add_faces(
                session=session,
                index=None,
                identity_id=person,
                vectors=vector[None, :],
                transformer_version="bench",
            )


def measure_lookup(rows: int, args: argparse.Namespace) -> dict:
    """Identity lookup per request at ``rows`` faces (filled server-side: 4 faces a person)."""
    url, admin = fresh_database(args.database_url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    per = 4
    try:
        start = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO identities (external_id, name, metadata, created_at, updated_at) "
                    "SELECT 'p' || g, 'person ' || g, '{}', now(), now() "
                    "FROM generate_series(1, :n) g"
                ),
                {"n": rows // per},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO faces (identity_id, vector, dim, content_hash, source, "
                    "created_at) SELECT 1 + (g - 1) / :per, decode(repeat('3c', 512), 'hex'), 128, "
                    "md5(g::text) || md5((g + 1)::text), 'legacy', now() "
                    "FROM generate_series(1, :n) g"
                ),
                {"n": rows, "per": per},
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE faces"))
            conn.execute(sa.text("VACUUM ANALYZE identities"))
        fill_s = time.perf_counter() - start
        rng = np.random.default_rng(0)
        out: dict = {"rows": rows, "fill_s": fill_s}
        for k in (5, 50):
            laps = []
            with factory() as session:
                plan = session.execute(
                    sa.text(
                        "EXPLAIN SELECT faces.id, identities.id FROM faces JOIN identities ON "
                        "identities.id = faces.identity_id WHERE faces.id IN (1, 2, 3)"
                    )
                ).all()
                for _ in range(args.lookups):
                    ids = rng.integers(1, rows + 1, k).tolist()
                    t0 = time.perf_counter()
                    found = identities_for_faces(session=session, face_ids=ids)
                    laps.append(time.perf_counter() - t0)
                    assert len(found) == len(set(ids))
            out[f"lookup{k}_p50_ms"] = 1000 * float(np.median(laps))
            out[f"lookup{k}_p95_ms"] = 1000 * float(np.percentile(laps, 95))
        out["plan"] = " / ".join(str(r[0]).strip() for r in plan)
        with factory() as session:
            out["old_stats_ms"] = 1000 * median_time(lambda: _old_stats(session), repeat=5)
        return out
    finally:
        engine.dispose()
        drop_database(admin, url)
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--lookup-rows", type=int, nargs="*", default=[])
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument(
        "--database-url", default=os.environ.get("FACEBRIDGE_TEST_POSTGRES_URL", DEFAULT_URL)
    )
    args = parser.parse_args()
    set_faiss_threads(1)
    work = Path(tempfile.mkdtemp(prefix="fb-sql-bench-"))
    sizes = [measure_size(n, args.changes, args, work) for n in args.rows]
    if sizes:
        print(f"\nPostgreSQL; {args.changes:,} enrolments on replica A (one transaction each)\n")
        print(
            "| gallery rows | import rows/s | import RSS growth MB | stats ms (counters) | "
            "old stats ms (COUNT) | B applies the changes: s | per change us | "
            "one full reconcile at N: s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in sizes:
            print(
                f"| {r['rows']:,} | {r['import_rows_per_s']:,.0f} | "
                f"{r['import_rss_growth_mb']:.0f} | {r['stats_ms']:.2f} | "
                f"{r['old_stats_ms']:.1f} | {r['tail_s']:.2f} | {r['tail_us_per_change']:.0f} | "
                f"{r['reconcile_s']:.2f} |"
            )
    for n in args.lookup_rows:
        r = measure_lookup(n, args)
        print(f"\nidentity lookup at {n:,} faces (filled in {r['fill_s']:.0f}s): ")
        print("| candidates | p50 ms | p95 ms |\n|---|---|---|")
        for k in (5, 50):
            print(f"| {k} | {r[f'lookup{k}_p50_ms']:.2f} | {r[f'lookup{k}_p95_ms']:.2f} |")
        print(f"\nplan: {r['plan']}")
        print(f"old stats (COUNT + GROUP BY) at {n:,}: {r['old_stats_ms']:.0f} ms")


if __name__ == "__main__":
    main()
