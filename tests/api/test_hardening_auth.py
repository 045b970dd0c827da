"""Issue 11 (hardening), authentication and request shape: the key is checked before a byte of
the body is read, failed attempts are limited per address, ids past 64 bits are 422, a key
cannot revoke itself by accident, and 405 names every method of the path."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.startup import wait_until_started

from .conftest import ADMIN, assert_problem, create_key, make_settings, started_client

HUGE = str(2**63)  # one past the largest 64-bit signed integer


def _drive(app: Any, *, path: str, headers: list[tuple[bytes, bytes]], chunks: int) -> dict:
    """Send a POST with a streamed body of ``chunks`` x 64 kB straight into the ASGI app;
    report the status and how many chunks the app pulled before answering."""
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"\0" * 65536, "more_body": pulled < chunks}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "app": app,
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return {"status": start["status"], "pulled": pulled, "headers": dict(start["headers"])}


@pytest.mark.parametrize("path", ["/v1/gallery/import", "/v1/admin/transformers"])
def test_an_upload_without_a_key_is_refused_before_its_body_is_read(
    client: TestClient, path: str
) -> None:
    multipart = [(b"content-type", b"multipart/form-data; boundary=x")]
    declared = [*multipart, (b"content-length", str(1 << 30).encode())]  # "1 GiB follows"
    for headers in (
        declared,
        [*declared, (b"x-api-key", b"fb_00000000_wrong-key-xxxxxxxxxxxxxxx")],
    ):
        result = _drive(client.app, path=path, headers=headers, chunks=16384)
        assert result["status"] == 401
        assert result["pulled"] == 0, "the body was read before the key was checked"
        assert result["headers"][b"connection"] == b"close"


def test_an_enrol_key_upload_to_admin_is_403_before_the_body(client: TestClient) -> None:
    enrol = create_key(client, "enrol")["X-API-Key"].encode()
    headers = [(b"content-type", b"multipart/form-data; boundary=x"), (b"x-api-key", enrol)]
    result = _drive(client.app, path="/v1/admin/transformers", headers=headers, chunks=100)
    assert (result["status"], result["pulled"]) == (403, 0)


def test_malformed_json_without_a_key_is_401_not_422(client: TestClient) -> None:
    response = client.post(
        "/v1/identities", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert_problem(response, 401, "unauthorized")
    with_key = client.post(
        "/v1/identities",
        content=b'{"name": ',
        headers={"content-type": "application/json", **ADMIN},
    )
    assert_problem(with_key, 422, "invalid-input")


def test_failed_authentication_is_limited_per_address(tmp_path: Path, tiny_manifest: Path) -> None:
    settings = make_settings(tmp_path, tiny_manifest, auth_failure_limit=5)
    app = create_app(settings)
    bad = {"X-API-Key": "fb_00000000_not-a-real-key-at-all-xxxxxxxx"}
    with TestClient(app, raise_server_exceptions=False, client=("10.1.2.3", 4000)) as attacker:
        wait_until_started(app)
        assert attacker.get("/v1/identities", headers=ADMIN).status_code == 200  # known good
        for _ in range(5):
            assert_problem(attacker.get("/v1/identities", headers=bad), 401)
        refused = attacker.get("/v1/identities", headers=bad)
        body = assert_problem(refused, 429, "too-many-requests")
        assert 0 < int(refused.headers["retry-after"]) <= 60 and body["retry_after_s"] > 0
        # A key this address already used successfully still passes; guesses do not.
        assert attacker.get("/v1/identities", headers=ADMIN).status_code == 200
        assert_problem(attacker.get("/v1/identities"), 429)
        with TestClient(app, raise_server_exceptions=False, client=("10.9.9.9", 1)) as other:
            assert_problem(other.get("/v1/identities", headers=bad), 401)  # another address


def test_the_limit_can_be_turned_off(tmp_path: Path, tiny_manifest: Path) -> None:
    settings = make_settings(tmp_path, tiny_manifest, auth_failure_limit=0)
    with started_client(settings) as test_client:
        bad = {"X-API-Key": "fb_00000000_not-a-real-key-at-all-xxxxxxxx"}
        statuses = {test_client.get("/v1/identities", headers=bad).status_code for _ in range(40)}
    assert statuses == {401}


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", f"/v1/identities/{HUGE}", {}),
        ("PATCH", f"/v1/identities/{HUGE}", {"json": {"name": "x"}}),
        ("DELETE", f"/v1/identities/{HUGE}", {}),
        ("DELETE", f"/v1/identities/1/faces/{HUGE}", {}),
        ("GET", "/v1/identities", {"params": {"offset": HUGE}}),
        ("DELETE", f"/v1/admin/keys/{HUGE}", {}),
    ],
)
def test_integers_past_64_bits_are_422(
    client: TestClient, method: str, path: str, kwargs: dict
) -> None:
    assert_problem(client.request(method, path, headers=ADMIN, **kwargs), 422, "invalid-input")


def test_verify_with_an_identity_id_past_64_bits_is_422(client: TestClient) -> None:
    from .conftest import image_part

    response = client.post(
        "/v1/verify", files=[image_part(1)], data={"identity_id": HUGE}, headers=ADMIN
    )
    assert_problem(response, 422, "invalid-input")


def test_an_admin_key_cannot_revoke_itself_without_confirm(client: TestClient) -> None:
    created = client.post(
        "/v1/admin/keys", json={"name": "ops", "scopes": ["admin"]}, headers=ADMIN
    )
    mine = {"X-API-Key": created.json()["key"]}
    key_id = created.json()["id"]
    body = assert_problem(client.delete(f"/v1/admin/keys/{key_id}", headers=mine), 409, "conflict")
    assert "confirm=true" in body["detail"]
    assert client.get("/v1/admin/keys", headers=mine).status_code == 200  # still valid
    done = client.delete(f"/v1/admin/keys/{key_id}", params={"confirm": "true"}, headers=mine)
    assert done.status_code == 204
    assert_problem(client.get("/v1/admin/keys", headers=mine), 401)
    # Revoking ANOTHER key needs no confirmation.
    other = client.post("/v1/admin/keys", json={"name": "x", "scopes": ["identify"]}, headers=ADMIN)
    assert client.delete(f"/v1/admin/keys/{other.json()['id']}", headers=ADMIN).status_code == 204


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/identities/1", {"GET", "PATCH", "DELETE"}),
        ("PUT", "/v1/identities", {"GET", "POST"}),
        ("PATCH", "/v1/admin/keys", {"GET", "POST"}),
        ("POST", "/v1/admin/transformers/t-1", {"GET", "DELETE"}),
    ],
)
def test_405_allow_lists_every_method_of_the_path(
    client: TestClient, method: str, path: str, allowed: set[str]
) -> None:
    response = client.request(method, path, headers=ADMIN)
    assert_problem(response, 405, "method-not-allowed")
    listed = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed <= listed, listed
