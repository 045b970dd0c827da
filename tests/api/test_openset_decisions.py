"""Open-set decisions through the API: the calibrated threshold follows the live gallery (this
replica's writes and another's), explicit thresholds override, older files fall back with one
warning, verify keeps a 1:1 FAR rule, and the decision metrics count per transformer version."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.decision import SCORE_FORWARD, ScoreCalibration, fit_calibration, open_set_threshold

from .conftest import ADMIN, image_part, make_settings, started_client, upload_transformer
from .onnx_fixtures import TINY_DIM, random_rotation, write_matrix_transformer


@pytest.fixture(scope="module")
def calibration() -> ScoreCalibration:
    scores = np.random.default_rng(11).normal(0.0, 0.25, 200_000)
    return fit_calibration(scores, score_kind=SCORE_FORWARD, space="tiny-old-16", queries="plain")


@pytest.fixture
def calibrated_version(client: TestClient, tmp_path: Path, calibration: ScoreCalibration) -> str:
    path = write_matrix_transformer(
        tmp_path / "calibrated.onnx",
        matrix=random_rotation(TINY_DIM, seed=1),
        calibrations=(calibration,),
    )
    response = upload_transformer(client, path, activate=True)
    assert response.status_code == 201, response.text
    return response.json()["version"]


def _enrol(client: TestClient, seeds: range) -> list[int]:
    ids = []
    for seed in seeds:
        created = client.post("/v1/identities", json={"external_id": f"p{seed}"}, headers=ADMIN)
        identity = created.json()["id"]
        added = client.post(
            f"/v1/identities/{identity}/faces", files=[image_part(seed)], headers=ADMIN
        )
        assert added.status_code == 201, added.text
        ids.append(identity)
    return ids


def _identify(client: TestClient, *seeds: int, **params: object) -> dict:
    files = [image_part(seed) for seed in seeds]
    response = client.post("/v1/identify", files=files, params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_threshold_follows_identities_added_and_removed(
    client: TestClient, calibrated_version: str, calibration: ScoreCalibration
) -> None:
    def expected(faces: int) -> float:
        return open_set_threshold(calibration=calibration, target_fpir=0.01, gallery_faces=faces)

    ids = _enrol(client, range(3))
    small = _identify(client, 0)
    assert small["threshold_rule"] == "target-fpir" and small["target_fpir"] == 0.01
    # enrolment stores a mapped and a native vector per image: N counts both spaces' vectors
    assert (small["gallery_identities"], small["gallery_faces"]) == (3, 6)
    assert small["threshold"] == pytest.approx(expected(6))
    assert small["estimated_fpir"] == pytest.approx(0.01, rel=1e-6)
    assert small["results"][0]["match"] is not None  # its own image: score 1.0

    _enrol(client, range(3, 40))
    large = _identify(client, 0)
    assert (large["gallery_identities"], large["gallery_faces"]) == (40, 80)
    assert (
        large["threshold"] == pytest.approx(expected(80))
        and large["threshold"] > small["threshold"]
    )

    for identity in ids[:2]:
        assert client.delete(f"/v1/identities/{identity}", headers=ADMIN).status_code == 204
    after = _identify(client, 5)
    assert (after["gallery_identities"], after["gallery_faces"]) == (38, 76)
    assert after["threshold"] == pytest.approx(expected(76))
    assert after["threshold"] < large["threshold"]

    explicit = _identify(client, 5, threshold=0.3)
    assert (explicit["threshold_rule"], explicit["threshold"], explicit["target_fpir"]) == (
        "explicit",
        0.3,
        None,
    )
    assert explicit["estimated_fpir"] > after["estimated_fpir"]  # a laxer threshold: more FPIR


def test_another_replica_growing_the_gallery_moves_the_threshold(
    client: TestClient, settings, calibrated_version: str, calibration: ScoreCalibration
) -> None:  # type: ignore[no-untyped-def]
    _enrol(client, range(2))
    assert _identify(client, 0)["gallery_faces"] == 4  # mapped + native per enrolment
    with started_client(settings) as other:
        _enrol(other, range(100, 110))  # written by the other replica (same database)
    deadline = time.monotonic() + 10.0
    body = _identify(client, 0)
    while body["gallery_faces"] != 24 and time.monotonic() < deadline:
        time.sleep(0.1)  # this replica's GallerySync polls every 0.2 s in the test settings
        body = _identify(client, 0)
    assert (body["gallery_identities"], body["gallery_faces"]) == (12, 24)
    assert body["threshold"] == pytest.approx(
        open_set_threshold(calibration=calibration, target_fpir=0.01, gallery_faces=24)
    )


def test_an_older_file_without_calibration_falls_back_and_warns_once(
    tmp_path: Path,
    tiny_manifest: Path,
    transformer_files: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(tmp_path, tiny_manifest, target_fpir=0.05)
    caplog.set_level(logging.WARNING, logger="service.registry.holder")
    with started_client(settings) as client:
        assert upload_transformer(client, transformer_files["a"], activate=True).status_code == 201
        _enrol(client, range(3))
        for _ in range(3):
            body = _identify(client, 0, 1)
            assert body["threshold_rule"] == "transformer-threshold"
            assert body["threshold"] == 0.5 and body["target_fpir"] is None
            assert body["estimated_fpir"] is None and body["gallery_faces"] == 6
        time.sleep(0.5)  # a few generation polls: still one warning
    warnings = [r for r in caplog.records if "no open-set calibration" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_verify_keeps_a_far_based_threshold_labelled_as_such(
    client: TestClient, calibrated_version: str, calibration: ScoreCalibration
) -> None:
    (identity,) = _enrol(client, range(1))
    response = client.post(
        "/v1/verify", files=[image_part(0)], data={"identity_id": str(identity)}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["threshold_rule"] == "target-far" and body["target_far"] == 1e-3
    assert body["threshold"] == pytest.approx(calibration.score_at_far(1e-3))
    assert body["match"] is True


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def test_decision_metrics_count_outcomes_per_transformer(
    client: TestClient, calibrated_version: str
) -> None:
    _enrol(client, range(4))
    files = [
        image_part(0),
        image_part(1),
        image_part(999),
        ("image", ("x.jpg", b"no", "image/jpeg")),
    ]
    response = client.post("/v1/identify", files=files, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["ok", "ok", "ok", "invalid-image"]
    text = client.get("/metrics").text
    counts = {
        decision: _metric(
            text,
            "facebridge_identify_decisions_total",
            transformer=calibrated_version,
            decision=decision,
        )
        for decision in ("match", "no_match", "error")
    }
    assert counts == {"match": 2.0, "no_match": 1.0, "error": 1.0}
    histogram = _metric(
        text, "facebridge_identify_top1_score_count", transformer=calibrated_version
    )
    assert histogram == 3.0  # every result with a candidate
    top = _metric(
        text, "facebridge_identify_top1_score_bucket", transformer=calibrated_version, le="+Inf"
    )
    assert top == 3.0


def test_a_shadow_run_reports_the_candidates_fpir_at_the_live_gallery_size(
    client: TestClient,
    tmp_path: Path,
    transformer_files: dict[str, Path],
    calibration: ScoreCalibration,
) -> None:
    from service.decision import estimated_fpir

    assert upload_transformer(client, transformer_files["a"], activate=True).status_code == 201
    _enrol(client, range(6))
    path = write_matrix_transformer(
        tmp_path / "candidate.onnx",
        matrix=random_rotation(TINY_DIM, seed=5),
        calibrations=(calibration,),
    )
    candidate = upload_transformer(client, path).json()["version"]
    started = client.post(
        f"/v1/admin/transformers/{candidate}/shadow", json={"sample_rate": 1.0}, headers=ADMIN
    )
    assert started.status_code == 201, started.text
    fpir = client.get(f"/v1/admin/transformers/{candidate}/shadow", headers=ADMIN).json()["fpir"]
    assert fpir["available"] is True and fpir["gallery_faces"] == 12  # both spaces' vectors
    assert fpir["threshold"] == pytest.approx(
        open_set_threshold(calibration=calibration, target_fpir=0.01, gallery_faces=12), abs=1e-5
    )
    assert fpir["value"] == pytest.approx(0.01, rel=1e-6) and fpir["target_fpir"] == 0.01
    assert fpir["one_to_one_fpir"] == pytest.approx(  # the file stores knots to 6 decimals
        estimated_fpir(calibration=calibration, threshold=0.5, gallery_faces=12), rel=1e-4
    )
    overview = client.get("/v1/admin/shadow", headers=ADMIN).json()
    assert overview["current"]["fpir"]["available"] is True
