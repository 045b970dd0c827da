"""Shadow evaluation over HTTP: a candidate compared with the active version on live identify
traffic, checked against the replies the candidate really gives once promoted."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from .conftest import ADMIN, assert_problem, image_part, upload_transformer
from .onnx_fixtures import TINY_DIM, random_rotation, write_matrix_transformer

ENROLLED = 6
PROBES = [*range(ENROLLED), 101, 102, 103]  # enrolled faces and strangers


@pytest.fixture
def candidates(tmp_path: Path) -> dict[str, Path]:
    """``same``: a's matrix in another file (identical answers); ``near``: a perturbed a."""
    a = random_rotation(TINY_DIM, seed=1)  # transformer_files["a"]
    noise = np.random.default_rng(5).standard_normal(a.shape).astype(np.float32)
    near, _ = np.linalg.qr(a + 0.35 * noise)
    return {
        "same": write_matrix_transformer(tmp_path / "same.onnx", matrix=a, recipe="same-map"),
        "near": write_matrix_transformer(
            tmp_path / "near.onnx", matrix=near.astype(np.float32), recipe="near-map"
        ),
    }


def _identify(client: TestClient, seed: int) -> dict[str, Any]:
    response = client.post("/v1/identify", files=[image_part(seed)], headers=ADMIN)
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    result.pop("timings")
    return result


def _shadow_results(client: TestClient, version: str, images: int) -> dict[str, Any]:
    """The run's results once the shadow thread has compared ``images`` images."""
    deadline = time.monotonic() + 20
    while True:
        run = client.get(f"/v1/admin/transformers/{version}/shadow", headers=ADMIN).json()
        if run["results"]["images"] >= images or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def _upload(client: TestClient, path: Path) -> str:
    response = upload_transformer(client, path)
    assert response.status_code == 201, response.text
    return response.json()["version"]


def _expected(before: list[dict], after: list[dict]) -> tuple[float, float]:
    """Agreement and decision-change rate recomputed from real replies (naive reference)."""

    def top(r: dict) -> int | None:
        return r["candidates"][0]["identity_id"] if r["candidates"] else None

    def match(r: dict) -> int | None:
        return None if r["match"] is None else r["match"]["identity_id"]

    both = [(b, a) for b, a in zip(before, after, strict=True) if top(b) and top(a)]
    agreement = sum(top(b) == top(a) for b, a in both) / len(both)
    changed = sum(match(b) != match(a) for b, a in zip(before, after, strict=True))
    return agreement, changed / len(before)


def test_shadow_figures_equal_the_candidates_real_replies(
    client: TestClient, enrolled: Any, active_version: str, candidates: dict[str, Path]
) -> None:
    enrolled(ENROLLED)
    near = _upload(client, candidates["near"])
    before = [_identify(client, seed) for seed in PROBES]

    started = client.post(
        f"/v1/admin/transformers/{near}/shadow",
        json={"sample_rate": 1.0, "reason": "try near"},
        headers=ADMIN,
    )
    assert started.status_code == 201, started.text
    assert started.json()["baseline"] == active_version and started.json()["running"]
    during = [_identify(client, seed) for seed in PROBES]
    assert during == before  # a shadow run never changes a reply
    run = _shadow_results(client, near, len(PROBES))
    results = run["results"]
    assert results["requests"] == results["images"] == len(PROBES)
    assert results["dropped"] == results["errors"] == results["skipped"] == 0
    assert results["scores"]["active"]["n"] == len(PROBES)

    metrics = client.get("/metrics").text
    assert f'facebridge_shadow_images_total{{candidate="{near}"' in metrics
    assert f'facebridge_shadow_top1_score_count{{candidate="{near}",role="candidate"}}' in metrics

    promoted = client.post(
        f"/v1/admin/transformers/{near}/activate", json={"reason": "shadow ok"}, headers=ADMIN
    )
    assert promoted.status_code == 200, promoted.text
    after = [_identify(client, seed) for seed in PROBES]
    agreement, change_rate = _expected(before, after)
    assert results["top1_agreement"] == pytest.approx(agreement)
    assert results["decision_change_rate"] == pytest.approx(change_rate)
    assert 0 < change_rate < 1  # the perturbed map really changes some decisions

    # Promotion ended the run and the activation record keeps the figures the operator saw.
    stopped = client.get(f"/v1/admin/transformers/{near}/shadow", headers=ADMIN).json()
    assert stopped["running"] is False and "activate" in stopped["stop_reason"]
    audit = client.get("/v1/admin/audit", params={"action": "activate"}, headers=ADMIN).json()
    record = audit["items"][0]
    assert record["to_value"] == near and record["from_value"] == active_version
    assert record["reason"] == "shadow ok" and record["actor_key_id"] is not None
    assert record["details"]["shadow"]["top1_agreement"] == pytest.approx(agreement)


def test_an_identical_map_agrees_everywhere(
    client: TestClient, enrolled: Any, active_version: str, candidates: dict[str, Path]
) -> None:
    enrolled(ENROLLED)
    same = _upload(client, candidates["same"])
    assert (
        client.post(
            f"/v1/admin/transformers/{same}/shadow", json={"sample_rate": 1.0}, headers=ADMIN
        ).status_code
        == 201
    )
    for seed in PROBES:
        _identify(client, seed)
    results = _shadow_results(client, same, len(PROBES))["results"]
    assert results["top1_agreement"] == 1.0 and results["decision_change_rate"] == 0.0
    assert results["scores"]["active"] == results["scores"]["candidate"]
    overview = client.get("/v1/admin/shadow", headers=ADMIN).json()
    assert overview["current"]["candidate"] == same
    assert (
        overview["current"]["fpir"]["gallery_faces"] == 2 * ENROLLED
    )  # mapped + native per enrolment


def test_shadow_refusals(
    client: TestClient, transformer_files: dict[str, Path], candidates: dict[str, Path]
) -> None:
    a = _upload(client, transformer_files["a"])
    same = _upload(client, candidates["same"])
    near = _upload(client, candidates["near"])
    # No active version to compare with.
    assert_problem(client.post(f"/v1/admin/transformers/{same}/shadow", headers=ADMIN), 409)
    client.post(f"/v1/admin/transformers/{a}/activate", headers=ADMIN)
    assert_problem(client.post(f"/v1/admin/transformers/{a}/shadow", headers=ADMIN), 409)
    assert_problem(client.post("/v1/admin/transformers/t-nope/shadow", headers=ADMIN), 404)
    bad_rate = client.post(
        f"/v1/admin/transformers/{same}/shadow", json={"sample_rate": 0}, headers=ADMIN
    )
    assert_problem(bad_rate, 422)
    first = client.post(f"/v1/admin/transformers/{same}/shadow", headers=ADMIN)
    assert first.status_code == 201 and first.json()["sample_rate"] == 0.1  # the setting
    again = client.post(f"/v1/admin/transformers/{same}/shadow", headers=ADMIN)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert_problem(client.post(f"/v1/admin/transformers/{near}/shadow", headers=ADMIN), 409)
    # Deleting the candidate stops its run; stopping a version that is not shadowed is 404.
    assert client.delete(f"/v1/admin/transformers/{same}", headers=ADMIN).status_code == 204
    assert client.get("/v1/admin/shadow", headers=ADMIN).json()["current"] is None
    assert_problem(client.delete(f"/v1/admin/transformers/{near}/shadow", headers=ADMIN), 404)
    started = client.post(f"/v1/admin/transformers/{near}/shadow", headers=ADMIN)
    assert started.status_code == 201
    stopped = client.delete(
        f"/v1/admin/transformers/{near}/shadow", params={"reason": "enough"}, headers=ADMIN
    )
    assert stopped.status_code == 200 and stopped.json()["stop_reason"] == "enough"
    actions = [e["action"] for e in client.get("/v1/admin/audit", headers=ADMIN).json()["items"]]
    assert actions.count("shadow-start") == 2 and actions.count("shadow-stop") == 2
