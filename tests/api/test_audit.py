"""The audit history over HTTP: who (the admin key's id), when, from -> to, why; rollback walks
the history (three rollbacks in a row never flip-flop) and ends in a clear 409."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from .conftest import ADMIN, assert_problem, create_key, upload_transformer
from .onnx_fixtures import TINY_DIM, random_rotation, write_matrix_transformer


def _versions(client: TestClient, tmp_path: Path, n: int) -> list[str]:
    out = []
    for seed in range(1, n + 1):
        path = write_matrix_transformer(
            tmp_path / f"t{seed}.onnx", matrix=random_rotation(TINY_DIM, seed=seed)
        )
        response = upload_transformer(client, path)
        assert response.status_code == 201, response.text
        out.append(response.json()["version"])
    return out


def test_three_rollbacks_in_a_row_walk_back_then_409(client: TestClient, tmp_path: Path) -> None:
    a, b, c, d = _versions(client, tmp_path, 4)
    for version in (a, b, c, d):
        client.post(f"/v1/admin/transformers/{version}/activate", headers=ADMIN)
    listing = client.get("/v1/admin/transformers", headers=ADMIN).json()
    assert (listing["active"], listing["rollback_target"]) == (d, c)
    seen = []
    for _ in range(3):
        rolled = client.post(
            "/v1/admin/transformers/rollback", json={"reason": "step back"}, headers=ADMIN
        )
        assert rolled.status_code == 200, rolled.text
        seen.append(rolled.json()["version"])
    assert seen == [c, b, a]
    body = assert_problem(client.post("/v1/admin/transformers/rollback", headers=ADMIN), 409)
    assert "nothing older" in body["detail"]
    listing = client.get("/v1/admin/transformers", headers=ADMIN).json()
    assert (listing["active"], listing["rollback_target"]) == (a, None)
    events = client.get("/v1/admin/audit", params={"action": "rollback"}, headers=ADMIN).json()
    assert events["total"] == 3
    assert [(e["from_value"], e["to_value"]) for e in reversed(events["items"])] == [
        (d, c),
        (c, b),
        (b, a),
    ]
    assert {e["reason"] for e in events["items"]} == {"step back"}


def test_key_changes_name_the_admin_key_that_made_them(client: TestClient) -> None:
    me = client.get("/v1/whoami", headers=ADMIN).json()
    created = client.post(
        "/v1/admin/keys",
        json={"name": "kiosk", "scopes": ["identify"], "reason": "new kiosk"},
        headers=ADMIN,
    ).json()
    revoked = client.delete(
        f"/v1/admin/keys/{created['id']}", params={"reason": "kiosk stolen"}, headers=ADMIN
    )
    assert revoked.status_code == 204
    page = client.get("/v1/admin/audit", headers=ADMIN).json()
    revoke, create = page["items"][0], page["items"][1]
    assert (create["action"], create["reason"], create["to_value"]) == (
        "key-create",
        "new kiosk",
        "identify",
    )
    assert (revoke["action"], revoke["reason"]) == ("key-revoke", "kiosk stolen")
    assert create["actor_key_id"] == revoke["actor_key_id"] == me["id"]
    assert created["key"] not in str(page)  # the secret is never in the history
    assert created["prefix"] in create["subject"]


def test_audit_paging_filters_and_scope(client: TestClient, tmp_path: Path) -> None:
    _versions(client, tmp_path, 3)
    page = client.get("/v1/admin/audit", params={"limit": 2, "offset": 1}, headers=ADMIN).json()
    assert page["limit"] == 2 and page["offset"] == 1 and len(page["items"]) == 2
    everything = client.get("/v1/admin/audit", params={"limit": 500}, headers=ADMIN).json()
    assert [e["id"] for e in everything["items"][1:3]] == [e["id"] for e in page["items"]]
    ids = [e["id"] for e in everything["items"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    uploads = client.get("/v1/admin/audit", params={"action": "upload"}, headers=ADMIN).json()
    assert uploads["total"] == 3
    assert_problem(client.get("/v1/admin/audit", params={"limit": 0}, headers=ADMIN), 422)
    assert_problem(client.get("/v1/admin/audit", headers=create_key(client, "identify")), 403)
