"""Kit end-to-end over a real uvicorn process: top-1 over HTTP = offline protocol top-1, a hot
swap under concurrent load with zero failed requests, and per-image results (a faceless image
in a batch of real faces) with the open-set decision named in the reply."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .conftest import ADMIN, KitAssets, KitServer

pytestmark = [pytest.mark.e2e, pytest.mark.kit, pytest.mark.slow]

BATCH = 16  # images per request (the service's default max_batch_images)
CLIENT_THREADS = 3


def _identify_batch(client: httpx.Client, aligned_dir: Path, paths: list[str]) -> list[dict]:
    files = [("image", (Path(p).name, (aligned_dir / p).read_bytes(), "image/jpeg")) for p in paths]
    response = client.post("/v1/identify", files=files, params={"top_k": 5}, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_top1_over_http_matches_the_offline_protocol(
    kit_assets: KitAssets, kit_server: KitServer
) -> None:
    version = kit_server.versions["default"]
    with kit_server.server.client() as client:
        activated = client.post(f"/v1/admin/transformers/{version}/activate", headers=ADMIN)
        assert activated.status_code == 200, activated.text
        batches = [
            list(range(i, min(i + BATCH, len(kit_assets.probe_paths))))
            for i in range(0, len(kit_assets.probe_paths), BATCH)
        ]
        started = time.perf_counter()
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            answers = list(
                pool.map(
                    lambda rows: _identify_batch(
                        client, kit_assets.aligned_dir, [kit_assets.probe_paths[r] for r in rows]
                    ),
                    batches,
                )
            )
        elapsed = time.perf_counter() - started
    results = [result for answer in answers for result in answer]
    assert len(results) == len(kit_assets.probe_paths)
    assert {r["transformer"] for r in results} == {version}
    assert {r["backbone"] for r in results} == {"mobilefacenet-128"}
    hits = sum(
        bool(r["candidates"]) and r["candidates"][0]["external_id"] == expected
        for r, expected in zip(results, kit_assets.probe_identities, strict=True)
    )
    http_top1 = 100.0 * hits / len(results)
    offline = kit_assets.offline_top1["default"]
    print(
        f"\nkit e2e: {len(results)} probes over HTTP in {elapsed:.1f}s "
        f"({len(results) / elapsed:.0f} images/s); top-1 HTTP {http_top1:.2f}% "
        f"vs offline {offline:.2f}% (default: two-way, flip-averaged)"
    )
    # Same crops, same backbone, same maps and fused scores: at most 2 probes (0.12) may differ.
    assert abs(http_top1 - offline) <= 0.12


def test_a_faceless_image_in_a_batch_fails_alone(
    kit_assets: KitAssets, kit_server: KitServer
) -> None:
    import io

    from PIL import Image

    version = kit_server.versions["default"]
    grey = io.BytesIO()
    Image.new("RGB", (112, 112), (128, 128, 128)).save(grey, format="JPEG")
    paths = kit_assets.probe_paths[:7]
    files = [
        ("image", (Path(p).name, (kit_assets.aligned_dir / p).read_bytes(), "image/jpeg"))
        for p in paths
    ]
    files.insert(3, ("image", ("grey.jpg", grey.getvalue(), "image/jpeg")))
    with kit_server.server.client() as client:
        activated = client.post(f"/v1/admin/transformers/{version}/activate", headers=ADMIN)
        assert activated.status_code == 200, activated.text
        response = client.post("/v1/identify", files=files, headers=ADMIN)
        metrics = client.get("/metrics").text
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert [r["status"] for r in results] == ["ok"] * 3 + ["no-face"] + ["ok"] * 4
    faceless = results[3]
    assert faceless["filename"] == "grey.jpg" and faceless["candidates"] == []
    assert faceless["problem"]["code"] == "no-face" and faceless["problem"]["status"] == 422
    assert faceless["problem"]["detail"].startswith("image 3:")
    answered = [r for i, r in enumerate(results) if i != 3]
    expected = [kit_assets.probe_identities[i] for i in range(7)]
    assert all(r["candidates"] for r in answered)  # the other 7 are answered (candidates stay)
    right = [
        r["candidates"][0]["external_id"] == e for r, e in zip(answered, expected, strict=True)
    ]
    assert sum(right) >= 6
    # the open-set rule, at the live gallery size
    assert body["threshold_rule"] == "target-fpir" and body["target_fpir"] == 0.01
    assert body["gallery_faces"] == body["gallery_identities"] == kit_assets.gallery_size
    assert 0.85 < body["threshold"] < 0.99
    assert f'facebridge_identify_decisions_total{{decision="no_face",transformer="{version}"}}' in (
        metrics
    )


MILVUS_PROBES = 512  # enough to compare engines probe by probe; the full set runs on FAISS


def test_milvus_gives_faiss_top1_on_the_same_probes(
    kit_assets: KitAssets, kit_server: KitServer, kit_server_milvus: KitServer
) -> None:
    """The same kit probes over HTTP, embedded FAISS vs Milvus (Lite, default HNSW index):
    the same top-1 identity for every probe."""
    rows = list(range(min(MILVUS_PROBES, len(kit_assets.probe_paths))))
    top1: dict[str, list[str | None]] = {}
    for engine, server in (("faiss", kit_server), ("milvus", kit_server_milvus)):
        version = server.versions["default"]
        with server.server.client() as client:
            activated = client.post(f"/v1/admin/transformers/{version}/activate", headers=ADMIN)
            assert activated.status_code == 200, activated.text
            stats = client.get("/v1/gallery/stats", headers=ADMIN).json()
            assert stats["vector_store"] == engine and stats["consistent"] is True
            results = [
                r
                for start in range(0, len(rows), BATCH)
                for r in _identify_batch(
                    client,
                    kit_assets.aligned_dir,
                    [kit_assets.probe_paths[i] for i in rows[start : start + BATCH]],
                )
            ]
        top1[engine] = [
            r["candidates"][0]["external_id"] if r["candidates"] else None for r in results
        ]
    differ = [
        i for i, (f, m) in enumerate(zip(top1["faiss"], top1["milvus"], strict=True)) if f != m
    ]
    hits = sum(t == e for t, e in zip(top1["milvus"], kit_assets.probe_identities, strict=False))
    print(
        f"\nkit e2e: Milvus top-1 {100 * hits / len(rows):.2f}% on {len(rows)} probes, "
        f"{len(differ)} differ from FAISS"
    )
    assert not differ, differ[:10]


def test_hot_swap_under_load_has_no_failures_and_names_a_live_version(
    kit_assets: KitAssets, kit_server: KitServer
) -> None:
    versions = [kit_server.versions["default"], kit_server.versions["rotation"]]
    stop = threading.Event()
    # (started, finished, version named in the reply) for every request; failures kept apart.
    replies: list[tuple[float, float, str]] = []
    failures: list[str] = []
    # (call started, call returned, version): the swap happens somewhere inside the call.
    swaps: list[tuple[float, float, str]] = []
    probes = kit_assets.probe_paths[:64]

    def hammer(worker: int) -> None:
        with kit_server.server.client() as client:
            i = worker
            while not stop.is_set():
                path = probes[i % len(probes)]
                i += CLIENT_THREADS
                files = [("image", ("p.jpg", (kit_assets.aligned_dir / path).read_bytes()))]
                start = time.monotonic()
                try:
                    response = client.post("/v1/identify", files=files, headers=ADMIN)
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                end = time.monotonic()
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                replies.append((start, end, response.json()["results"][0]["transformer"]))

    with kit_server.server.client() as admin:
        start = time.monotonic()
        admin.post(f"/v1/admin/transformers/{versions[0]}/activate", headers=ADMIN)
        swaps.append((start, time.monotonic(), versions[0]))
        threads = [threading.Thread(target=hammer, args=(w,)) for w in range(CLIENT_THREADS)]
        for thread in threads:
            thread.start()
        try:
            for round_ in range(12):
                time.sleep(0.25)
                target = versions[(round_ + 1) % 2]
                start = time.monotonic()
                response = admin.post(f"/v1/admin/transformers/{target}/activate", headers=ADMIN)
                assert response.status_code == 200, response.text
                swaps.append((start, time.monotonic(), target))
            time.sleep(0.25)
        finally:
            stop.set()
            for thread in threads:
                thread.join()

    assert not failures, failures[:5]
    assert len(replies) >= 20
    seen = {version for _, _, version in replies}
    assert seen == set(versions), f"load never saw both versions: {seen}"
    for started, finished, version in replies:
        assert version in _possibly_active(swaps, started, finished), (started, finished, version)


def _possibly_active(swaps: list[tuple[float, float, str]], start: float, end: float) -> set[str]:
    """Versions that may have been active at some instant of [start, end]: version i is active
    from somewhere inside its activation call until somewhere inside the next one."""
    live = set()
    for i, (call_start, _, version) in enumerate(swaps):
        until = swaps[i + 1][1] if i + 1 < len(swaps) else float("inf")
        if call_start <= end and until >= start:
            live.add(version)
    return live
