"""Benchmark: shadow evaluation of the kit demo's two recipes, checked against promotion.

The kit demo's service (``facebridge demo``: the eval split's gallery per docs/PROTOCOL.md,
414 templates + 1,017 distractors; the kit MobileFaceNet; flip-averaged queries) runs the
``default`` recipe (two-way ridge, fused scores); ``ridge`` (forward only) is the candidate.
All 1,697 probe crops are sent three times through /v1/identify on a real uvicorn process:

  A. default active, no shadow run              -> the replies users get
  B. default active, ridge shadowed at 100%     -> replies must equal A; the shadow figures
  C. ridge activated (promoted)                 -> the replies users would get after promotion

and prints the shadow figures next to the same figures recomputed from A and C (they must
agree: the shadow runs the service's own search and decision), plus the server's CPU per image
with and without the shadow run (its cost: one transformer run + search per sampled image).

    .venv/bin/python bench/shadow.py              # ~4 minutes on 2 cores
    .venv/bin/python bench/shadow.py --limit 400  # a quicker look

Needs the kit and the train extra (both recipes are fitted here on the bridge split, as the
demo fits its one). Client and server share the machine: CPU figures are per server process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from identify import ADMIN_KEY, _process_cpu_seconds, _start_server

HEADERS = {"X-API-Key": ADMIN_KEY}
RECIPES = ("default", "ridge")
BATCH = 8
CLIENT_THREADS = 2


def _prepare(workdir: Path, kit: Path) -> tuple[Path, list[Path], dict[str, Path]]:
    from service.contracts import load_pairs
    from training.demo.fitting import fit_recipe
    from training.demo.service_side import gallery_and_probes

    pairs_path = kit / "lfw" / "pairs.npz"
    gallery, _, probes = gallery_and_probes(load_pairs(pairs_path).select_split("eval"))
    gallery_file = workdir / "gallery.npz"
    np.savez(gallery_file, old=gallery.old, name=gallery.name, path=gallery.path)
    crops = [kit / "lfw" / "aligned" / path for _, path in probes]
    files = {
        recipe: fit_recipe(pairs_path=pairs_path, output=workdir / f"{recipe}.onnx", recipe=recipe)
        for recipe in RECIPES
    }
    return gallery_file, crops, files


def _post(client: Any, path: str, **kwargs: Any) -> Any:
    response = client.post(path, headers=HEADERS, **kwargs)
    if response.status_code >= 300:
        raise SystemExit(f"{path}: {response.status_code} {response.text[:300]}")
    return response.json()


def _replies(url: str, crops: list[Path]) -> list[tuple[int | None, int | None, float | None]]:
    """(top-1 identity, match identity, top-1 score) per crop, in order."""
    import httpx

    batches = [crops[i : i + BATCH] for i in range(0, len(crops), BATCH)]

    def send(batch: list[Path]) -> list[tuple[int | None, int | None, float | None]]:
        files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in batch]
        with httpx.Client(base_url=url, timeout=120) as client:
            results = _post(client, "/v1/identify", files=files)["results"]
        out = []
        for r in results:
            top = r["candidates"][0] if r["candidates"] else None
            out.append(
                (
                    None if top is None else top["identity_id"],
                    None if r["match"] is None else r["match"]["identity_id"],
                    None if top is None else round(top["score"], 5),
                )
            )
        return out

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        return [row for rows in pool.map(send, batches) for row in rows]


def _recomputed(before: list, after: list) -> dict[str, float]:
    both = [(b, a) for b, a in zip(before, after, strict=True) if b[0] and a[0]]
    return {
        "top1_agreement": sum(b[0] == a[0] for b, a in both) / len(both),
        "decision_change_rate": sum(b[1] != a[1] for b, a in zip(before, after, strict=True))
        / len(before),
        "match_rate_active": sum(b[1] is not None for b in before) / len(before),
        "match_rate_candidate": sum(a[1] is not None for a in after) / len(after),
    }


def _timed(pid: int, url: str, crops: list[Path]) -> tuple[list, float, float]:
    cpu, wall = _process_cpu_seconds(pid), time.perf_counter()
    replies = _replies(url, crops)
    return replies, _process_cpu_seconds(pid) - cpu, time.perf_counter() - wall


def _wait_for_shadow(client: Any, version: str, images: int) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while True:
        run = client.get(f"/v1/admin/transformers/{version}/shadow", headers=HEADERS).json()
        if run["results"]["images"] >= images or time.monotonic() > deadline:
            return run
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="use the first N probes only")
    parser.add_argument("--threads", type=int, default=2, help="server inference threads")
    args = parser.parse_args()
    import httpx

    from service.kit import find_kit_dir

    kit = find_kit_dir()
    if kit is None:
        raise SystemExit("needs the sample kit (FACEBRIDGE_KIT_DIR or ../shared/kit)")
    os.environ["FACEBRIDGE_SHADOW_QUEUE_SIZE"] = "4096"  # measure every sample: none dropped
    with tempfile.TemporaryDirectory(prefix="facebridge-shadow-") as tmp:
        workdir = Path(tmp)
        gallery, crops, files = _prepare(workdir, kit)
        crops = crops[: args.limit] if args.limit else crops
        process, url = _start_server(workdir, kit, threads=args.threads, flip=True)
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                with gallery.open("rb") as fh:
                    _post(client, "/v1/gallery/import", files={"file": ("g.npz", fh)})
                versions = {}
                for recipe in RECIPES:
                    with files[recipe].open("rb") as fh:
                        versions[recipe] = _post(
                            client,
                            "/v1/admin/transformers",
                            files={"file": (f"{recipe}.onnx", fh, "application/octet-stream")},
                            data={"activate": str(recipe == "default").lower()},
                        )["version"]
                _replies(url, crops[:16])  # warm-up
                plain, cpu_off, wall_off = _timed(process.pid, url, crops)
                _post(
                    client,
                    f"/v1/admin/transformers/{versions['ridge']}/shadow",
                    json={"sample_rate": 1.0, "reason": "bench/shadow.py"},
                )
                # B's CPU counts until the shadow thread has compared the last sample.
                cpu, started = _process_cpu_seconds(process.pid), time.perf_counter()
                shadowed = _replies(url, crops)
                wall_on = time.perf_counter() - started
                run = _wait_for_shadow(client, versions["ridge"], len(crops))
                cpu_on = _process_cpu_seconds(process.pid) - cpu
                _post(client, f"/v1/admin/transformers/{versions['ridge']}/activate", json={})
                promoted = _replies(url, crops)
        finally:
            process.terminate()
            process.wait(timeout=30)
    _report(run, plain, shadowed, promoted, cpu=(cpu_off, cpu_on), wall=(wall_off, wall_on))
    return 0


def _report(run: dict, plain: list, shadowed: list, promoted: list, *, cpu: tuple, wall: tuple):
    n = len(plain)
    r = run["results"]
    truth = _recomputed(plain, promoted)
    print(f"\nshadow: candidate ridge beside active default, {n} kit probe crops, sample 100%")
    print(f"replies with the shadow run equal the replies without it: {shadowed == plain}")
    print("\n| figure | shadow run | recomputed from real replies (A vs C) |")
    print("|---|---|---|")
    rows = [
        ("top-1 agreement", r["top1_agreement"], truth["top1_agreement"]),
        ("decisions that would change", r["decision_change_rate"], truth["decision_change_rate"]),
        ("match rate, active (default)", r["match_rate"]["active"], truth["match_rate_active"]),
        (
            "match rate, candidate (ridge)",
            r["match_rate"]["candidate"],
            truth["match_rate_candidate"],
        ),
    ]
    for name, shadow_value, real in rows:
        print(f"| {name} | {100 * shadow_value:.2f} % | {100 * real:.2f} % |")
    changes = r["decision_changes"]
    print(
        f"\ndecision changes: {changes['total']} of {r['images']} images "
        f"(match -> no match {changes['match_to_no_match']}, no match -> match "
        f"{changes['no_match_to_match']}, match -> another identity {changes['match_to_other']});"
        f" dropped {r['dropped']}, errors {r['errors']}"
    )
    for role in ("active", "candidate"):
        s = r["scores"][role]
        q = s["quantiles"]
        print(
            f"top-1 scores, {role}: mean {s['mean']:.3f}, p05 {q['p05']:.2f}, p50 {q['p50']:.2f}, "
            f"p95 {q['p95']:.2f} (histogram bins of 0.02)"
        )
    fpir = run["fpir"]
    print(f"estimated FPIR: {fpir['value'] if fpir['available'] else fpir['detail']}")
    print("\n| pass | server CPU ms / image | wall s |")
    print("|---|---|---|")
    print(f"| A: no shadow run | {1000 * cpu[0] / n:.1f} | {wall[0]:.1f} |")
    print(f"| B: shadow at 100 % | {1000 * cpu[1] / n:.1f} | {wall[1]:.1f} |")
    print(f"shadow cost: x{cpu[1] / cpu[0]:.3f} server CPU at a 100 % sample rate")


if __name__ == "__main__":
    raise SystemExit(main())
