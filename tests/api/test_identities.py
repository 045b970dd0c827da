"""Identities and faces over HTTP: CRUD, pagination, filters, enrolment, deletion."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from .conftest import assert_problem, image_part


def test_create_get_patch_delete(client: TestClient, keys: dict) -> None:
    enrol = keys["enrol"]
    created = client.post(
        "/v1/identities", json={"external_id": "e-1", "name": "Ann"}, headers=enrol
    )
    assert created.status_code == 201, created.text
    identity = created.json()
    assert identity["external_id"] == "e-1" and identity["name"] == "Ann"
    identity_id = identity["id"]

    got = client.get(f"/v1/identities/{identity_id}", headers=keys["identify"])
    assert got.status_code == 200 and got.json()["faces"] == []

    patched = client.patch(f"/v1/identities/{identity_id}", json={"name": "Anne"}, headers=enrol)
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Anne" and patched.json()["external_id"] == "e-1"

    duplicate = client.post("/v1/identities", json={"external_id": "e-1"}, headers=enrol)
    assert_problem(duplicate, 409, "conflict")

    assert client.delete(f"/v1/identities/{identity_id}", headers=enrol).status_code == 204
    assert_problem(
        client.get(f"/v1/identities/{identity_id}", headers=keys["identify"]), 404, "not-found"
    )
    assert_problem(client.delete(f"/v1/identities/{identity_id}", headers=enrol), 404)
    assert_problem(client.patch(f"/v1/identities/{identity_id}", json={}, headers=enrol), 404)


def test_list_paginates_and_filters(client: TestClient, keys: dict) -> None:
    for i in range(5):
        client.post(
            "/v1/identities",
            json={"external_id": f"x-{i}", "name": f"Name {i}"},
            headers=keys["enrol"],
        )
    page = client.get("/v1/identities", params={"limit": 2, "offset": 1}, headers=keys["identify"])
    body = page.json()
    assert body["total"] == 5 and body["limit"] == 2 and body["offset"] == 1
    assert len(body["items"]) == 2
    by_external = client.get(
        "/v1/identities", params={"external_id": "x-3"}, headers=keys["identify"]
    ).json()
    assert [i["external_id"] for i in by_external["items"]] == ["x-3"]
    by_name = client.get(
        "/v1/identities", params={"name": "name 4"}, headers=keys["identify"]
    ).json()
    assert [i["name"] for i in by_name["items"]] == ["Name 4"]


def test_enrol_marks_faces_mapped_and_delete_face_removes_it(
    client: TestClient, keys: dict, enrolled: Callable[[int], list[int]], active_version: str
) -> None:
    (identity_id,) = enrolled(1)
    more = client.post(
        f"/v1/identities/{identity_id}/faces",
        files=[image_part(50), image_part(51)],
        headers=keys["enrol"],
    )
    assert more.status_code == 201, more.text
    body = more.json()
    assert body["transformer"] == active_version and len(body["faces"]) == 2
    for face in body["faces"]:
        assert face["source"] == "mapped" and face["transformer_version"] == active_version
    detail = client.get(f"/v1/identities/{identity_id}", headers=keys["identify"]).json()
    # each image: its mapped face (old space) and its native twin (the backbone's space)
    by_source = sorted((f["source"], f["space"]) for f in detail["faces"])
    assert by_source == [("mapped", "tiny-old-16")] * 3 + [("native", "tiny-backbone-16")] * 3
    natives = sorted(f["id"] for f in detail["faces"] if f["source"] == "native")

    face_id = body["faces"][0]["id"]
    for gone_id in (face_id, natives[1]):  # image 50's two vectors
        gone = client.delete(f"/v1/identities/{identity_id}/faces/{gone_id}", headers=keys["enrol"])
        assert gone.status_code == 204
    assert_problem(
        client.delete(f"/v1/identities/{identity_id}/faces/{face_id}", headers=keys["enrol"]), 404
    )
    stats = client.get("/v1/gallery/stats", headers=keys["identify"]).json()
    assert stats["faces"] == 2 and stats["faces_by_source"]["native"] == 2
    assert stats["faces_by_space"] == {"tiny-old-16": 2, "tiny-backbone-16": 2}
    assert stats["index_vectors"] == 2 and stats["consistent"] is True
    # The deleted face no longer answers identify.
    result = client.post(
        "/v1/identify", files=[image_part(50)], params={"top_k": 1}, headers=keys["identify"]
    ).json()["results"][0]
    assert result["candidates"][0]["score"] < 0.99


def test_enrol_for_unknown_identity_is_404_before_inference(
    client: TestClient, keys: dict, active_version: str
) -> None:
    response = client.post(
        "/v1/identities/4242/faces", files=[image_part(1)], headers=keys["enrol"]
    )
    assert_problem(response, 404, "not-found")


def test_enrol_bad_image_stores_nothing(
    client: TestClient, keys: dict, active_version: str
) -> None:
    identity_id = client.post("/v1/identities", json={"name": "B"}, headers=keys["enrol"]).json()[
        "id"
    ]
    response = client.post(
        f"/v1/identities/{identity_id}/faces",
        files=[("image", ("x.png", b"", "image/png"))],
        headers=keys["enrol"],
    )
    assert_problem(response, 422)
    assert client.get("/v1/gallery/stats", headers=keys["identify"]).json()["faces"] == 0
