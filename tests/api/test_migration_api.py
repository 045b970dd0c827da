"""Progressive migration through the API: enrolment stores both vectors, identify captures a
confident match's native vector (never with capture=false, never from a repeated batch), the
provenance is in SQL, undo restores the exact previous results, status and gauges."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image

from service.decision import SCORE_FORWARD, SCORE_NATIVE, fit_calibration

from .conftest import (
    assert_problem,
    create_key,
    make_settings,
    started_client,
    upload_transformer,
)
from .onnx_fixtures import TINY_DIM, random_rotation, write_matrix_transformer


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (112, 112, 3)).astype(np.float64)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def part(seed: int, *, blend: int | None = None) -> tuple[str, tuple[str, bytes, str]]:
    """Image ``seed``, or 70% of it and 30% of image ``blend`` (another photo of the person)."""
    pixels = _pixels(seed) if blend is None else 0.7 * _pixels(seed) + 0.3 * _pixels(blend)
    return ("image", (f"{seed}-{blend}.png", _png(pixels), "image/png"))


def write_calibrated_transformer(path: Path) -> Path:
    """A rotation transformer carrying forward and native calibrations (random 16-d impostors)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 6000, TINY_DIM))
    cos = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    calibrations = tuple(
        fit_calibration(cos, score_kind=kind, space=space, queries="plain")
        for kind, space in ((SCORE_FORWARD, "tiny-old-16"), (SCORE_NATIVE, "tiny-backbone-16"))
    )
    matrix = random_rotation(TINY_DIM, seed=5)
    return write_matrix_transformer(path, matrix=matrix, calibrations=calibrations)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_calibrated_transformer(tmp_path_factory.mktemp("calibrated") / "rot.onnx")


@pytest.fixture
def client(tmp_path: Path, tiny_manifest: Path, calibrated: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, tiny_manifest, capture="confident")
    with started_client(settings) as test_client:
        up = upload_transformer(test_client, calibrated, activate=True)
        assert up.status_code == 201, up.text
        test_client.headers.update(create_key(test_client, "identify", "enrol", "admin"))
        yield test_client


def _enrol(client: TestClient, n: int) -> list[int]:
    ids = []
    for seed in range(n):
        created = client.post("/v1/identities", json={"external_id": f"p{seed}"})
        identity_id = created.json()["id"]
        assert (
            client.post(f"/v1/identities/{identity_id}/faces", files=[part(seed)]).status_code
            == 201
        )
        ids.append(identity_id)
    return ids


def _results(client: TestClient) -> list[list[tuple[int, float, tuple[str, ...]]]]:
    """The probes' candidates (identity, score, spaces), asked with capture=false."""
    probes = [part(s, blend=100 + s) for s in range(5)] + [part(200 + s) for s in range(3)]
    out = []
    for probe in probes:
        reply = client.post("/v1/identify", files=[probe], params={"capture": "false"})
        assert reply.status_code == 200, reply.text
        (result,) = reply.json()["results"]
        out.append(
            [(c["identity_id"], c["score"], tuple(c["spaces"])) for c in result["candidates"]]
        )
    return out


def _captures(client: TestClient) -> int:
    return client.get("/v1/migration").json()["captures_total"]


def test_capture_provenance_undo_and_status(client: TestClient) -> None:
    ids = _enrol(client, 5)
    faces = client.get(f"/v1/identities/{ids[1]}").json()["faces"]
    assert sorted(f["source"] for f in faces) == ["mapped", "native"]
    before = _results(client)
    assert _captures(client) == 0  # capture=false stored nothing
    assert {"tiny-old-16", "tiny-backbone-16"} == set(before[1][0][2])
    assert before[1][0][0] == ids[1]

    # a confident match: its native vector is kept, with provenance
    reply = client.post("/v1/identify", files=[part(1, blend=7)], headers={"X-Request-ID": "req-1"})
    assert reply.status_code == 200 and reply.json()["results"][0]["match"]["identity_id"] == ids[1]
    assert _captures(client) == 1
    faces = client.get(f"/v1/identities/{ids[1]}").json()["faces"]
    assert sorted(f["source"] for f in faces) == ["captured", "mapped", "native"]
    state = client.app.state.facebridge  # type: ignore[attr-defined]
    with state.session_factory() as session:
        row = session.execute(sa.text("SELECT request_id, score, margin FROM face_captures")).one()
    assert row[0] == "req-1" and row[1] > 0.5 and row[2] >= 1.5
    # one person repeated in a batch: nothing captured
    batch = client.post("/v1/identify", files=[part(2, blend=8), part(2, blend=9)])
    assert batch.status_code == 200 and _captures(client) == 1
    changed = _results(client)
    assert changed != before  # identity 1's evidence moved

    # undo by identity: exactly the previous results
    assert_problem(client.post("/v1/admin/captures/undo", json={}), 422)
    undone = client.post("/v1/admin/captures/undo", json={"identity_id": ids[1]})
    assert undone.status_code == 200 and undone.json()["faces_removed"] == 1
    assert _results(client) == before

    # undo by time window
    client.post("/v1/identify", files=[part(3, blend=11)])
    assert _captures(client) == 1
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    window = client.post("/v1/admin/captures/undo", json={"since": since})
    assert window.json()["faces_removed"] == 1 and _results(client) == before

    status = client.get("/v1/migration").json()
    spaces = {s["space"]: s for s in status["spaces"]}
    assert spaces["tiny-old-16"]["faces"] == 5 and spaces["tiny-backbone-16"]["faces"] == 5
    assert status["coverage"] == 1.0 and len(status["captures_per_day"]) == 30
    assert [u["faces_removed"] for u in status["undo_history"]] == [1, 1]
    metrics = client.get("/metrics").text
    assert 'facebridge_gallery_space_vectors{space="tiny-backbone-16"} 5.0' in metrics
    assert "facebridge_captures_total 2.0" in metrics
