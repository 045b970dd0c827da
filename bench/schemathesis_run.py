"""Benchmark/soak: Schemathesis (every check, every phase) over the served OpenAPI document of
a real uvicorn server with an admin key; prints the server's answers by status and the checks
that failed. Target (issue 11): >= 2,000 requests, 0 server errors (5xx).

    .venv/bin/python bench/schemathesis_run.py                       # ~2.5 minutes
    .venv/bin/python bench/schemathesis_run.py --max-time 300 --workers 2 --seed 7

No kit needed: the server runs tiny synthetic ONNX models (tests/api/onnx_fixtures.py) with a
transformer active and one enrolled identity; the failed-auth limit is off (Schemathesis sends
keyless requests on purpose). Requests are counted by the server (its own
facebridge_http_requests_total), so the figures are what it answered. Exit status 1 when any
5xx was answered or fewer than --min-requests were made.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from e2e.fuzzing import run_schemathesis, start_fuzz_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=100, help="per operation and phase")
    parser.add_argument("--max-time", type=int, default=120, help="seconds of fuzzing")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--min-requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="facebridge-fuzz-") as tmp:
        server = start_fuzz_server(Path(tmp))
        try:
            start = time.perf_counter()
            result = run_schemathesis(
                server,
                max_examples=args.max_examples,
                workers=args.workers,
                seed=args.seed,
                max_time_s=args.max_time,
            )
            seconds = time.perf_counter() - start
        finally:
            server.kill()
    print(f"schemathesis --checks all, seed {args.seed}, {args.workers} workers, {seconds:.0f} s")
    print()
    print("| status | requests |")
    print("|---|---|")
    for status in sorted(result.statuses):
        print(f"| {status} | {result.statuses[status]} |")
    print(f"| **all** | **{result.requests}** |")
    print(f"| **5xx** | **{result.server_errors}** |")
    print()
    print("| check that failed | cases | operations |")
    print("|---|---|---|")
    for name, count in sorted(result.failures.items()) or [("(none)", 0)]:
        where = ", ".join(sorted(result.operations.get(name.split()[0], ())))
        print(f"| {name} | {count} | {where} |")
    if result.server_errors:
        print(result.output[-8000:])
    return 1 if result.server_errors or result.requests < args.min_requests else 0


if __name__ == "__main__":
    raise SystemExit(main())
