"""The OpenAPI document: stable operationIds, tags, and examples for every endpoint."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

EXPECTED_OPERATIONS = {
    ("post", "/v1/identify"): "identify",
    ("post", "/v1/verify"): "verify",
    ("post", "/v1/identities"): "createIdentity",
    ("get", "/v1/identities"): "listIdentities",
    ("get", "/v1/identities/{identity_id}"): "getIdentity",
    ("patch", "/v1/identities/{identity_id}"): "updateIdentity",
    ("delete", "/v1/identities/{identity_id}"): "deleteIdentity",
    ("post", "/v1/identities/{identity_id}/faces"): "enrolFaces",
    ("delete", "/v1/identities/{identity_id}/faces/{face_id}"): "deleteFace",
    ("post", "/v1/gallery/import"): "importGallery",
    ("get", "/v1/gallery/stats"): "galleryStats",
    ("post", "/v1/admin/transformers"): "uploadTransformer",
    ("get", "/v1/admin/transformers"): "listTransformers",
    ("get", "/v1/admin/transformers/{version}"): "getTransformer",
    ("post", "/v1/admin/transformers/{version}/activate"): "activateTransformer",
    ("post", "/v1/admin/transformers/rollback"): "rollbackTransformer",
    ("delete", "/v1/admin/transformers/{version}"): "deleteTransformer",
    ("post", "/v1/admin/keys"): "createApiKey",
    ("get", "/v1/admin/keys"): "listApiKeys",
    ("delete", "/v1/admin/keys/{key_id}"): "revokeApiKey",
    ("get", "/v1/admin/audit"): "listAuditEvents",
    ("post", "/v1/admin/transformers/{version}/shadow"): "startShadow",
    ("get", "/v1/admin/transformers/{version}/shadow"): "getShadow",
    ("delete", "/v1/admin/transformers/{version}/shadow"): "stopShadow",
    ("get", "/v1/admin/shadow"): "listShadowRuns",
    ("get", "/v1/whoami"): "whoami",
    ("get", "/v1/migration"): "migrationStatus",
    ("post", "/v1/admin/captures/undo"): "undoCaptures",
    ("get", "/v1/admin/captures/pairs"): "exportCapturePairs",
    ("post", "/v1/faces/detect"): "detectFaces",
    ("get", "/healthz"): "healthz",
    ("get", "/readyz"): "readyz",
    ("get", "/metrics"): "metrics",
}


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def _has_example(spec: dict[str, Any], media: dict[str, Any]) -> bool:
    if "example" in media or "examples" in media:
        return True
    schema = _resolve(spec, media.get("schema", {}))
    return bool(schema.get("examples") or schema.get("example"))


def test_operation_ids_are_stable_and_complete(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    found = {
        (method, path): op["operationId"]
        for path, item in spec["paths"].items()
        for method, op in item.items()
    }
    assert found == EXPECTED_OPERATIONS


def test_every_endpoint_has_tags_and_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    missing = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            if not op.get("tags"):
                missing.append(f"{where}: no tags")
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and not _has_example(spec, body):
                missing.append(f"{where}: request body without example")
            for status, response in op["responses"].items():
                for media_type, media in response.get("content", {}).items():
                    if not _has_example(spec, media):
                        missing.append(f"{where} {status} {media_type}: no example")
    assert not missing, "\n".join(missing)


def test_scoped_routes_declare_the_api_key_and_problem_responses(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    for path, item in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in item.items():
            assert op.get("security"), f"{method} {path} declares no security"
            assert "401" in op["responses"], f"{method} {path} documents no 401"
            assert "application/problem+json" in op["responses"]["401"]["content"]
