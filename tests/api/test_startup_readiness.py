"""Issue 11 (hardening), start-up and readiness: the server answers /healthz while the slow
start-up runs in the background, /readyz names what is loading, data routes answer 503 with
the reason; /readyz is O(1) and off the inference pool."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import service.app as app_module
from service.app import create_app
from service.errors import ServiceUnavailable
from service.settings import ServiceSettings
from service.startup import wait_until_started

from .conftest import ADMIN, assert_problem, make_settings


@pytest.fixture
def settings(tmp_path: Path, tiny_manifest: Path) -> ServiceSettings:
    """The background id-set check off: a test here breaks the index on purpose."""
    return make_settings(tmp_path, tiny_manifest, gallery_check_seconds=0)


def test_healthz_answers_while_the_gallery_loads(
    tmp_path: Path, tiny_manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    real_open = app_module.open_gallery

    def slow_open(**kwargs):  # type: ignore[no-untyped-def]
        entered.set()
        assert release.wait(30), "the test never released the start-up"
        return real_open(**kwargs)

    monkeypatch.setattr(app_module, "open_gallery", slow_open)
    app = create_app(make_settings(tmp_path, tiny_manifest))
    with TestClient(app, raise_server_exceptions=False) as client:
        try:
            assert entered.wait(30)
            health = client.get("/healthz")
            assert health.status_code == 200 and health.json()["status"] == "starting"
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["status"] == "starting"
            assert "opening the gallery index" in ready.json()["checks"]["startup"]
            starting = client.get("/v1/identities", headers=ADMIN)
            body = assert_problem(starting, 503, "unavailable")
            assert "starting" in body["detail"] and "gallery index" in body["detail"]
            assert starting.headers["retry-after"] == "1"
        finally:
            release.set()
        wait_until_started(app)
        assert client.get("/readyz").status_code == 200
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/v1/identities", headers=ADMIN).status_code == 200


def test_a_failed_start_up_is_reported_by_healthz_and_readyz(
    tmp_path: Path, tiny_manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_open(**kwargs):  # type: ignore[no-untyped-def]
        raise OSError("disk on fire")

    monkeypatch.setattr(app_module, "open_gallery", broken_open)
    before = set(threading.enumerate())
    app = create_app(make_settings(tmp_path, tiny_manifest))
    with TestClient(app, raise_server_exceptions=False) as client:
        with pytest.raises(OSError, match="disk on fire"):
            wait_until_started(app)
        health = client.get("/healthz")
        assert health.status_code == 503 and "disk on fire" in health.json()["detail"]
        ready = client.get("/readyz").json()
        assert ready["status"] == "failed" and "disk on fire" in ready["checks"]["startup"]
        body = assert_problem(client.get("/v1/identities", headers=ADMIN), 503)
        assert "failed to start" in body["detail"]
    # What the failed start-up had built (engine, pollers...) was undone.
    leftover = {t for t in set(threading.enumerate()) - before if t.name.startswith("facebridge")}
    assert leftover == set()


def test_readyz_does_not_read_every_face_id(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.gallery.store as store

    def every_id(session):  # type: ignore[no-untyped-def]
        raise AssertionError("readyz read every face id")

    monkeypatch.setattr(store, "sql_face_ids", every_id)
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["index"].startswith("ok: 0 vectors = 0 faces")


def test_readyz_answers_when_the_inference_pool_is_full(client: TestClient) -> None:
    state = wait_until_started(client.app)  # type: ignore[arg-type]

    async def full(fn, /, **kwargs):  # type: ignore[no-untyped-def]
        raise ServiceUnavailable("too many requests in flight; retry shortly")

    state.pool.run = full  # type: ignore[method-assign]
    assert client.get("/readyz").status_code == 200


def test_readyz_fails_when_the_index_and_sql_disagree_for_long(
    client: TestClient, enrolled
) -> None:  # type: ignore[no-untyped-def]
    enrolled(2)
    state = wait_until_started(client.app)  # type: ignore[arg-type]
    ok = client.get("/readyz").json()["checks"]["index"]
    assert ok == "ok: 2 vectors = 2 faces in SQL"
    state.index.remove(ids=[int(i) for i in sorted(state.index.ids())[:1]])  # lose one
    syncing = client.get("/readyz")
    assert syncing.status_code == 200 and "syncing" in syncing.json()["checks"]["index"]
    state._count_mismatch_since -= 3600.0  # as if the mismatch had lasted an hour
    failing = client.get("/readyz")
    assert failing.status_code == 503
    assert failing.json()["checks"]["index"].startswith("fail: index has 1 vectors, SQL 2")
    stats = client.get("/v1/gallery/stats", headers=ADMIN).json()
    assert stats["consistent"] is False  # the detail lives here
    assert "facebridge_gallery_sql_faces 2.0" in client.get("/metrics").text
