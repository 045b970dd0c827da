"""Health, metrics, request ids and the one problem+json error shape."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import ContractError
from service.settings import ServiceSettings
from service.startup import wait_until_started

from .conftest import ADMIN, assert_problem, image_part, make_settings, started_client


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["backbone"] == "tiny-backbone-16"
    assert body["checks"]["index"].startswith("ok")


def test_metrics_count_requests_per_route_template(client: TestClient) -> None:
    client.get("/v1/identities/12345", headers=ADMIN)
    text = client.get("/metrics").text
    assert 'facebridge_http_requests_total{method="GET",route="/v1/identities/{identity_id}"' in (
        text
    )
    assert "facebridge_gallery_vectors" in text
    assert "/v1/identities/12345" not in text


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    mine = client.get("/healthz", headers={"X-Request-ID": "req-abc.123"})
    assert mine.headers["x-request-id"] == "req-abc.123"
    fresh = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert fresh.headers["x-request-id"] != "bad id with spaces"
    assert len(fresh.headers["x-request-id"]) == 32


def test_unknown_route_and_wrong_method_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/v1/nothing-here"), 404, "not-found")
    assert_problem(client.delete("/healthz"), 405, "method-not-allowed")


def test_validation_error_is_a_422_problem_with_errors(client: TestClient) -> None:
    body = assert_problem(
        client.get("/v1/identities", params={"limit": 0}, headers=ADMIN), 422, "invalid-input"
    )
    assert body["errors"][0]["loc"] == ["query", "limit"]
    assert "limit" in body["detail"]


def test_unexpected_exception_is_a_500_problem_without_traceback(
    settings: ServiceSettings,
) -> None:
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    with TestClient(app, raise_server_exceptions=False) as test_client:
        wait_until_started(app)
        response = test_client.get("/boom")
    body = assert_problem(response, 500, "internal-error")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert body["request_id"] in body["detail"]


def test_without_a_backbone_readyz_is_503_and_identify_says_why(
    tmp_path: Path, tiny_manifest: Path
) -> None:
    settings = make_settings(tmp_path, tiny_manifest, backbone_manifest=None)
    with started_client(settings) as test_client:
        ready = test_client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["backbone"].startswith("fail")
        response = test_client.post("/v1/identify", files=[image_part(1)], headers=ADMIN)
    assert_problem(response, 503, "unavailable")


def test_a_broken_backbone_stops_start_up_and_leaves_no_threads(tmp_path: Path) -> None:
    manifest = tmp_path / "broken.json"
    manifest.write_text('{"model_id": "x"}')
    settings = make_settings(tmp_path, manifest)
    # Compare thread sets, not counts: a thread of an earlier test may end meanwhile.
    before = set(threading.enumerate())
    app = create_app(settings)
    with pytest.raises(ContractError, match="invalid backbone manifest"), TestClient(app):
        pass
    assert set(threading.enumerate()) - before == set()
