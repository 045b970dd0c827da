"""End-to-end /v1/identify latency with two embedding spaces vs one, in-process (issue 10).

Three services in this one process, each the real app (``service.app.create_app``: SQLite,
the kit's MobileFaceNet through ONNX Runtime, FAISS flat stores, the SQL identity lookups),
with the migration simulation's gallery (bench/migration_latency.py: the eval split's
templates + distractors, 1,431 legacy vectors; one identity per person) and the same one-way
transformer:

- one space, ``FACEBRIDGE_CAPTURE=off`` (the default): the classic search path;
- one space, ``FACEBRIDGE_CAPTURE=confident``: the cross-space path with the old space alone;
- two spaces: the same gallery plus a native vector of every face (the worst case: every
  identity migrated), capture off.

Each test image's aligned crop is sent once to each service, in turns (a change in the
machine's load hits all three), batch 1, ``capture=false``. Reported: the request's wall
time (TestClient, in-process: no network) and the service's own search stage
(``search_ms + lookup_ms`` of the reply: FAISS, fusion and the SQL lookups).

    .venv/bin/python bench/migration_identify.py --transformer FILE.onnx [--requests 300]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from identify_server import ADMIN_KEY, post_gallery

ADMIN = {"X-API-Key": ADMIN_KEY}
SETUPS = ("one space, capture off", "one space, capture on", "two spaces (full native)")


def _app(workdir: Path, kit: Path, *, capture: str) -> tuple[Any, Any]:
    """(TestClient entered, app): a started service on its own SQLite file."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import ServiceSettings
    from service.startup import wait_until_started

    settings = ServiceSettings(
        database_url=f"sqlite:///{workdir / 'bench.db'}",
        data_dir=workdir / "var",
        backbone_manifest=kit / "models" / "mobilefacenet.json",
        gallery_model_id="dlib-resnet-v1",
        detector="none",
        face_check="off",
        admin_key=ADMIN["X-API-Key"],
        inference_threads=1,
        ort_intra_op_threads=1,
        faiss_threads=1,
        flip_average_queries=False,
        capture=capture,
    )
    app = create_app(settings)
    client = TestClient(app, raise_server_exceptions=True)
    client.__enter__()
    wait_until_started(app)
    return client, app


def _add_native(app: Any, names: np.ndarray, vectors: np.ndarray) -> int:
    """A native vector (the kit's new-model embedding) for every gallery face, per identity."""
    import sqlalchemy as sa

    from service.db.models import Identity
    from service.identities import add_faces

    state = app.state.facebridge
    space = state.backbone.model_id
    with state.session_factory() as session:
        ids = dict(session.execute(sa.select(Identity.external_id, Identity.id)).all())
        for name in np.unique(names):
            add_faces(
                session=session,
                index=None,
                identity_id=ids[str(name)],
                vectors=vectors[names == name],
                source="native",
                settings=state.settings,
                space=space,
            )
    state.gallery.refresh()
    return int(state.gallery.store(space).ntotal)


def _identify(client: Any, image: bytes) -> tuple[float, float]:
    """(wall seconds, the reply's search + lookup seconds)."""
    start = time.perf_counter()
    reply = client.post(
        "/v1/identify",
        files=[("image", ("q.jpg", image, "image/jpeg"))],
        params={"capture": "false"},
        headers=ADMIN,
    )
    wall = time.perf_counter() - start
    reply.raise_for_status()
    timings = reply.json()["results"][0]["timings"]
    return wall, (timings["search_ms"] + timings["lookup_ms"]) / 1000.0


def _measure(clients: list[Any], images: list[bytes], rounds: int) -> dict[str, list[float]]:
    """Median wall and stage seconds per setup: each image to every service in turn (the
    order rotates), the best of ``rounds`` medians."""
    best: dict[str, list[float]] = {name: [np.inf, np.inf] for name in SETUPS}
    for _ in range(rounds):
        seen: dict[str, list[tuple[float, float]]] = {name: [] for name in SETUPS}
        for i, image in enumerate(images):
            for j in range(len(SETUPS)):
                k = (i + j) % len(SETUPS)
                seen[SETUPS[k]].append(_identify(clients[k], image))
        for name, rows in seen.items():
            wall = statistics.median(r[0] for r in rows)
            stage = statistics.median(r[1] for r in rows)
            best[name] = [min(best[name][0], wall), min(best[name][1], stage)]
    return best


def main(argv: list[str] | None = None) -> int:
    from service.contracts import load_pairs
    from service.kit import find_kit_dir
    from service.migration.simulate import migration_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transformer", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=300, help="test images sent")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    kit = find_kit_dir()
    if kit is None:
        print("kit absent: this bench needs its backbone and aligned crops")
        return 2
    pairs = load_pairs(kit / "lfw" / "pairs.npz", mmap=False)
    split = migration_split(pairs, np.flatnonzero(pairs.split == "eval"))
    gallery = np.concatenate([split.templates, split.distractors])
    names = pairs.name[gallery]
    images = [
        (kit / "lfw" / "aligned" / str(pairs.path[r])).read_bytes()
        for r in split.test[: args.requests]
    ]
    with tempfile.TemporaryDirectory(prefix="fb-mig-identify-") as tmp:
        work = Path(tmp)
        npz = work / "gallery.npz"
        np.savez(npz, old=pairs.old[gallery], external_id=names, name=names)
        clients, apps = [], []
        for n, capture in enumerate(("off", "confident", "off")):
            (work / str(n)).mkdir()
            client, app = _app(work / str(n), kit, capture=capture)
            if post_gallery(client, npz, args.transformer)[0]:
                raise SystemExit(
                    "a two-way transformer keeps its own re-scoring: give a one-way one"
                )
            clients.append(client)
            apps.append(app)
        native = _add_native(apps[2], names, pairs.new[gallery])
        try:
            best = _measure(clients, images, args.rounds)
        finally:
            for client in clients:
                client.__exit__(None, None, None)
    _print(best, native=native, gallery=int(gallery.size), requests=len(images))
    return 0


def _print(best: dict[str, list[float]], *, native: int, gallery: int, requests: int) -> None:
    print(
        f"{requests} requests per service (batch 1, capture=false, plain queries, 1 inference "
        f"/ ORT / FAISS thread), gallery {gallery} old-space vectors; two spaces: +{native} native"
    )
    head = "| service | /v1/identify median (ms) | vs one space off / on "
    print(head + "| search stage (ms) | vs off / on |")
    print("|---|---|---|---|---|")
    off, on = best[SETUPS[0]], best[SETUPS[1]]
    for name, (wall, stage) in best.items():
        print(
            f"| {name} | {wall * 1000:.2f} | {wall / off[0]:.3f}x / {wall / on[0]:.3f}x "
            f"| {stage * 1000:.3f} | {stage / off[1]:.2f}x / {stage / on[1]:.2f}x |"
        )


if __name__ == "__main__":
    sys.exit(main())
