"""Benchmark: resident memory (RSS) of a real uvicorn server while it handles the hostile
uploads of issue 11, with the time to the answer. Target: growth < 300 MB for each.

    .venv/bin/python bench/hostile_uploads.py            # ~1.5 minutes (builds a 4 GB bomb)
    .venv/bin/python bench/hostile_uploads.py --bomb-gib 1

Cases: a 1 GiB upload WITHOUT a key to /v1/gallery/import and /v1/admin/transformers
(Content-Length declared, streamed until the server answers); the issue's .npz zip bomb (a few
MB whose `old` expands to --bomb-gib GiB: refused from its header when it declares more rows
than FACEBRIDGE_MAX_IMPORT_ROWS) and a 1 GiB one within the row limit (read in chunks); a
6000 x 6000 PNG to /v1/identify with the dlib detector (the [detect] extra). RSS is sampled
every 10 ms with psutil on the server process (growth = peak during the request minus the
value before it). No kit needed (tiny synthetic models).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

import httpx  # noqa: E402
from e2e.conftest import ADMIN, Server, post_until_answered, start_tiny_server  # noqa: E402
from e2e.hostile import huge_png, npz_bomb, rss_peak  # noqa: E402


def _post_file(server: Server, path: str, name: str, data: object, part: str) -> httpx.Response:
    with server.client(timeout=300) as client:
        return client.post(
            path, files={part: (name, data, "application/octet-stream")}, headers=ADMIN
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bomb-gib", type=float, default=4.0, help="expanded size of the bomb")
    args = parser.parse_args()
    rows: list[tuple[str, str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="facebridge-hostile-") as tmp:
        root = Path(tmp)
        print("building the inputs ...", file=sys.stderr)
        bomb_rows = int(args.bomb_gib * (1 << 30)) // (128 * 4)
        big_bomb = npz_bomb(root / "bomb.npz", rows=bomb_rows, dim=128)
        small_bomb = npz_bomb(root / "bomb-1g.npz", rows=2_000_000, dim=128)
        png = huge_png(6000)
        server = start_tiny_server(root, FACEBRIDGE_DETECTOR="dlib")
        assert server.process is not None
        cases = [
            (
                "1 GiB to /v1/gallery/import, no key",
                lambda: post_until_answered(
                    server,
                    "/v1/gallery/import",
                    total=1 << 30,
                    api_key=None,
                    declare_length=True,
                    part_name="file",
                )[0],
            ),
            (
                "1 GiB to /v1/admin/transformers, no key",
                lambda: post_until_answered(
                    server,
                    "/v1/admin/transformers",
                    total=1 << 30,
                    api_key=None,
                    declare_length=True,
                    part_name="file",
                )[0],
            ),
            (
                f".npz bomb {big_bomb.stat().st_size / 1e6:.1f} MB -> {args.bomb_gib:g} GiB",
                lambda: (
                    _post_file(
                        server, "/v1/gallery/import", "bomb.npz", big_bomb.read_bytes(), "file"
                    ).status_code
                ),
            ),
            (
                f".npz bomb {small_bomb.stat().st_size / 1e6:.1f} MB -> 1 GiB (rows within limit)",
                lambda: (
                    _post_file(
                        server, "/v1/gallery/import", "bomb.npz", small_bomb.read_bytes(), "file"
                    ).status_code
                ),
            ),
            (
                f"6000x6000 PNG ({len(png) / 1e6:.1f} MB) to /v1/identify, dlib",
                lambda: _post_file(server, "/v1/identify", "big.png", png, "image").status_code,
            ),
        ]
        try:
            for name, run in cases:
                start = time.perf_counter()
                with rss_peak(server.process.pid) as rss:
                    status = run()
                rows.append((name, str(status), time.perf_counter() - start, rss.growth_mib))
        finally:
            server.kill()
    print("| hostile upload | answer | seconds | RSS growth (MiB) | < 300 MB |")
    print("|---|---|---|---|---|")
    for name, status, seconds, growth in rows:
        ok = "yes" if growth < 300 else "**NO**"
        print(f"| {name} | {status} | {seconds:.2f} | {growth:.1f} | {ok} |")
    return 0 if all(growth < 300 for *_, growth in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
