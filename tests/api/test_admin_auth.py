"""EVERY route under /v1/admin refuses without a key (401) and with a non-admin key (403)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from .conftest import assert_problem, create_key, make_settings, started_client


@pytest.fixture
def client(tmp_path: Path, tiny_manifest: Path) -> Iterator[TestClient]:
    """These tests fail authentication on purpose for every admin route: limit off."""
    with started_client(make_settings(tmp_path, tiny_manifest, auth_failure_limit=0)) as test:
        yield test


def _admin_routes(client: TestClient) -> list[tuple[str, str]]:
    routes = []
    # FastAPI nests included routers; iter_route_contexts flattens them to the real routes.
    for context in iter_route_contexts(client.app.routes):  # type: ignore[attr-defined]
        route = context.original_route
        if isinstance(route, APIRoute) and context.path.startswith("/v1/admin"):
            path = re.sub(r"\{[^}]+\}", "1", route.path)
            routes.extend((method, path) for method in sorted(route.methods))
    return routes


def test_every_admin_route_requires_the_admin_scope(client: TestClient) -> None:
    routes = _admin_routes(client)
    # The admin surface: transformers (upload, list, get, activate, rollback, delete)
    # and keys (create, list, revoke). New routes are covered automatically.
    assert len(routes) >= 9, routes
    non_admin = [create_key(client, "identify"), create_key(client, "enrol")]
    for method, path in routes:
        assert_problem(client.request(method, path), 401, "unauthorized")
        assert_problem(
            client.request(method, path, headers={"X-API-Key": "fb_not-a-real-key"}),
            401,
            "unauthorized",
        )
        for headers in non_admin:
            assert_problem(client.request(method, path, headers=headers), 403, "forbidden")


def test_missing_key_on_a_scoped_route_names_the_header(client: TestClient) -> None:
    response = client.get("/v1/identities")
    body = assert_problem(response, 401, "unauthorized")
    assert response.headers.get("www-authenticate") == "ApiKey"
    assert body["detail"]


def test_identify_key_cannot_enrol(client: TestClient) -> None:
    identify_key = create_key(client, "identify")
    assert_problem(
        client.post("/v1/identities", json={"name": "x"}, headers=identify_key), 403, "forbidden"
    )
