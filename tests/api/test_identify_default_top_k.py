"""FACEBRIDGE_DEFAULT_TOP_K is identify's number of candidates; the query parameter overrides it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.settings import ServiceSettings

from .conftest import image_part, make_settings


@pytest.fixture
def settings(tmp_path: Path, tiny_manifest: Path) -> ServiceSettings:
    return make_settings(tmp_path, tiny_manifest, default_top_k=2)


def test_identify_returns_the_configured_default_unless_the_query_says(
    client: TestClient, keys: dict, enrolled: Callable[[int], list[int]], active_version: str
) -> None:
    enrolled(4)

    def candidates(**params: int) -> tuple[int, int]:
        response = client.post(
            "/v1/identify", files=[image_part(0)], params=params, headers=keys["identify"]
        )
        assert response.status_code == 200, response.text
        body = response.json()
        return body["top_k"], len(body["results"][0]["candidates"])

    assert candidates() == (2, 2)
    assert candidates(top_k=3) == (3, 3)
