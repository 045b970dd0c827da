"""Transformer registry over HTTP: upload/validate, list, get, activate, rollback, delete."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from .conftest import ADMIN, assert_problem, identify_while_swapping, upload_transformer


def _active(client: TestClient) -> str | None:
    return client.get("/v1/admin/transformers", headers=ADMIN).json()["active"]


def test_upload_list_get_activate_rollback_delete(
    client: TestClient, transformer_files: dict[str, Path]
) -> None:
    first = upload_transformer(client, transformer_files["a"])
    assert first.status_code == 201, first.text
    a = first.json()
    assert a["active"] is False and a["input_dim"] == 16 and a["source_model"] == "tiny-backbone-16"
    again = upload_transformer(client, transformer_files["a"])
    assert again.status_code == 200 and again.json()["version"] == a["version"]

    b = upload_transformer(client, transformer_files["b"], activate=True).json()
    assert b["active"] is True
    listing = client.get("/v1/admin/transformers", headers=ADMIN).json()
    assert {t["version"] for t in listing["items"]} == {a["version"], b["version"]}
    assert listing["active"] == b["version"]
    fetched = client.get(f"/v1/admin/transformers/{a['version']}", headers=ADMIN).json()
    assert fetched["version"] == a["version"] and fetched["active"] is False

    activated = client.post(f"/v1/admin/transformers/{a['version']}/activate", headers=ADMIN)
    assert activated.status_code == 200 and activated.json()["active"] is True
    assert _active(client) == a["version"]
    rolled = client.post("/v1/admin/transformers/rollback", headers=ADMIN)
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["version"] == b["version"]
    assert _active(client) == b["version"]

    assert_problem(
        client.delete(f"/v1/admin/transformers/{b['version']}", headers=ADMIN), 409, "conflict"
    )
    assert client.delete(f"/v1/admin/transformers/{a['version']}", headers=ADMIN).status_code == 204
    assert_problem(
        client.get(f"/v1/admin/transformers/{a['version']}", headers=ADMIN), 404, "not-found"
    )
    assert_problem(
        client.post("/v1/admin/transformers/t-doesnotexist/activate", headers=ADMIN),
        404,
        "not-found",
    )


@pytest.mark.parametrize("broken", ["garbage", "wrong_dim", "wrong_source"])
def test_broken_transformer_is_refused_and_changes_nothing(
    client: TestClient, transformer_files: dict[str, Path], broken: str
) -> None:
    good = upload_transformer(client, transformer_files["a"], activate=True).json()
    response = upload_transformer(client, transformer_files[broken], activate=True)
    assert_problem(response, 422)
    listing = client.get("/v1/admin/transformers", headers=ADMIN).json()
    assert [t["version"] for t in listing["items"]] == [good["version"]]
    assert listing["active"] == good["version"]
    assert client.get("/readyz").json()["checks"]["transformer"] == good["version"]


def test_empty_or_mislabelled_transformer_upload(client: TestClient) -> None:
    empty = client.post(
        "/v1/admin/transformers",
        files={"file": ("t.onnx", b"", "application/octet-stream")},
        headers=ADMIN,
    )
    assert_problem(empty, 422)
    image = client.post(
        "/v1/admin/transformers",
        files={"file": ("t.png", b"\x89PNG....", "image/png")},
        headers=ADMIN,
    )
    assert_problem(image, 415, "unsupported-media-type")


def test_rollback_without_history_is_409(
    client: TestClient, transformer_files: dict[str, Path]
) -> None:
    upload_transformer(client, transformer_files["a"], activate=True)
    assert_problem(client.post("/v1/admin/transformers/rollback", headers=ADMIN), 409, "conflict")


def test_keys_create_list_revoke(client: TestClient) -> None:
    created = client.post(
        "/v1/admin/keys", json={"name": "kiosk", "scopes": ["identify"]}, headers=ADMIN
    )
    assert created.status_code == 201
    key = created.json()
    assert key["key"] and key["scopes"] == ["identify"]
    headers = {"X-API-Key": key["key"]}
    assert client.get("/v1/identities", headers=headers).status_code == 200
    listing = client.get("/v1/admin/keys", headers=ADMIN).json()["items"]
    assert any(item["id"] == key["id"] for item in listing)
    assert all("key" not in item for item in listing)
    assert client.delete(f"/v1/admin/keys/{key['id']}", headers=ADMIN).status_code == 204
    assert_problem(client.get("/v1/identities", headers=headers), 401, "unauthorized")
    bad_scope = client.post("/v1/admin/keys", json={"name": "x", "scopes": ["root"]}, headers=ADMIN)
    assert_problem(bad_scope, 422, "invalid-input")


def test_hot_swap_while_identifying_never_fails(
    client: TestClient, transformer_files: dict[str, Path]
) -> None:
    """In-process twin of the e2e hot-swap test (runs without the kit)."""
    versions = [
        upload_transformer(client, transformer_files[name], activate=name == "a").json()["version"]
        for name in ("a", "b")
    ]
    responses = identify_while_swapping(client, versions=versions, seeds=[0, 1, 2])
    outcomes = [
        (r.status_code, r.json()["results"][0]["transformer"] if r.is_success else None)
        for r in responses
    ]
    assert outcomes and all(status == 200 for status, _ in outcomes), outcomes[:5]
    assert {version for _, version in outcomes} <= set(versions)
