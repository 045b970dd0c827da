"""Where a server's CPU per /identify image goes: a py-spy raw profile folded into stages.

    .venv/bin/python bench/identify.py --concurrency 4 --seconds 20 --profile /tmp/p.txt
    .venv/bin/python bench/profile_stages.py /tmp/p.txt --cpu-ms-per-image 23.2

Each sample (py-spy ``--format raw``: one folded stack and its count per line, idle threads
excluded, so a sample is ~CPU) goes to the stage of its leaf-most frame that a rule names;
start-up and set-up stacks (imports, the lifespan, the gallery import and transformer upload)
are left out. ``--cpu-ms-per-image`` (the bench's server CPU ms/image) turns the shares into
milliseconds per image.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

# Leaf frames of a waiting thread (py-spy's idle detection does not work in every container:
# these are dropped whatever it says). uvloop's C loop shows as ``Runner.run``: waiting in
# epoll and running its own C callbacks look the same, so that leaf counts as the event loop.
IDLE_LEAVES = (
    "Condition.wait",
    "Event.wait",
    "Queue.get",
    "select",
    "sleep",
    "_wait_for_tstate_lock",
)
SETUP = ("_find_and_load", "lifespan", "import_gallery", "upload_transformer", "startup.py")
# (stage, function name or "", path fragment), tried leaf first: the first frame that matches
# names the sample's stage.
RULES: tuple[tuple[str, str, str], ...] = (
    ("backbone (OnnxBackbone.embed: the raw reference's work)", "embed", "inference/backbone"),
    ("decode (Pillow)", "", "inference/images"),
    ("align / crop check", "", "inference/faces"),
    ("align / crop check", "", "inference/facecheck"),
    ("transformer (ORT map / map_gallery)", "", "inference/transformer"),
    ("re-ranking (fused scores)", "", "service/fusion"),
    ("search (FAISS)", "", "gallery/engines"),
    ("search (FAISS)", "search", "service/app"),
    ("search (FAISS)", "search_with_vectors", "service/app"),
    ("identity lookup (SQL)", "", "service/identities"),
    ("identity lookup (SQL)", "", "sqlalchemy"),
    ("identity lookup (SQL)", "lookup", ""),
    ("decision / gallery count", "", "service/decision"),
    ("stage timings + metrics", "", "prometheus_client"),
    ("stage timings + metrics", "", "service/metrics"),
    ("key verification", "", "service/keys"),
    ("key verification", "", "api/auth"),
    ("key verification", "check", "api/deps"),
    ("multipart parsing", "", "multipart"),
    ("multipart parsing", "", "formparsers"),
    ("multipart parsing", "read_images", "api/uploads"),
    ("response building (pydantic, JSON)", "", "api/identify"),
    ("response building (pydantic, JSON)", "", "api/fast_json"),
    ("response building (pydantic, JSON)", "", "pydantic"),
    ("response building (pydantic, JSON)", "", "orjson"),
    ("response building (pydantic, JSON)", "", "fastapi/encoders"),
    ("response building (pydantic, JSON)", "serialize_response", ""),
    ("response building (pydantic, JSON)", "", "starlette/responses"),
    ("pipeline glue (numpy, stacking, outcomes)", "", "service/micro_batch"),
    ("middlewares", "", "service/app"),
    ("pipeline glue (numpy, stacking, outcomes)", "", "service/pipeline"),
    ("middlewares", "", "service/api/problems"),
)
GENERIC: tuple[tuple[str, str, str], ...] = (
    ("pipeline glue (numpy, stacking, outcomes)", "", "service/pipeline"),
    ("FastAPI routing + dependencies", "", "fastapi"),
    ("FastAPI routing + dependencies", "", "starlette"),
    ("HTTP server (uvicorn, httptools)", "", "uvicorn"),
    ("HTTP server (uvicorn, httptools)", "", "httptools"),
    ("thread hand-off (executor, futures)", "", "concurrent/futures"),
    ("thread hand-off (executor, futures)", "", "threading.py"),
    ("thread hand-off (executor, futures)", "_call_set_state", "asyncio/futures"),
    ("thread hand-off (executor, futures)", "wrap_future", "asyncio/futures"),
    ("event loop (asyncio, uvloop's C loop)", "", "asyncio"),
)


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        out.append((name.strip(), where.rstrip(")")))
    return out


def stage_of(stack: str) -> str | None:
    """The stage of one folded stack (root first, ';'-separated), None for set-up."""
    frames = _frames(stack)
    if any(marker in f"{name} {where}" for name, where in frames for marker in SETUP):
        return None
    if frames[-1][0] in IDLE_LEAVES:
        return None
    for rules in (RULES, GENERIC):  # a named stage anywhere on the stack beats generic code
        for name, where in reversed(frames):
            for stage, function, fragment in rules:
                short = name.rsplit(".", 1)[-1]
                if (not function or function in (name, short)) and fragment in where:
                    return stage
    return "other"


def fold(lines: list[str]) -> Counter[str]:
    stages: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stage = stage_of(stack)
        if stage is not None:
            stages[stage] += int(count)
    return stages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="py-spy record --format raw output")
    parser.add_argument("--cpu-ms-per-image", type=float, help="the bench's server CPU/image")
    args = parser.parse_args()
    stages = fold(args.profile.read_text().splitlines())
    total = sum(stages.values())
    if total == 0:
        print("no request-path samples", file=sys.stderr)
        return 1
    print(f"{total} request-path samples (set-up excluded)")
    print("| stage | samples | share | ms per image |")
    print("|---|---|---|---|")
    for stage, count in stages.most_common():
        share = count / total
        ms = "" if args.cpu_ms_per_image is None else f"{share * args.cpu_ms_per_image:.2f}"
        print(f"| {stage} | {count} | {100 * share:.1f}% | {ms} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
