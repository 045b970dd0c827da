"""POST /v1/gallery/import (npz, csv; idempotent; malformed -> 422, nothing stored) and stats."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from .conftest import assert_problem, image_part


def _npz(n: int, *, dim: int = 16, seed: int = 0, **extra: np.ndarray) -> bytes:
    rng = np.random.default_rng(seed)
    arrays = {
        "old": rng.standard_normal((n, dim)).astype(np.float32),
        "external_id": np.array([f"legacy-{i}" for i in range(n)]),
        "name": np.array([f"Legacy {i}" for i in range(n)]),
    }
    arrays.update(extra)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _import(client: TestClient, headers: dict, data: bytes, name: str = "gallery.npz", **kw):  # type: ignore[no-untyped-def]
    media = kw.pop("media", "application/octet-stream")
    return client.post(
        "/v1/gallery/import", files={"file": (name, data, media)}, data=kw, headers=headers
    )


def test_import_is_idempotent_and_searchable(
    client: TestClient, keys: dict, active_version: str
) -> None:
    data = _npz(20)
    first = _import(client, keys["enrol"], data)
    assert first.status_code == 200, first.text
    assert first.json()["rows"] == 20 and first.json()["identities_created"] == 20
    assert first.json()["faces_added"] == 20
    second = _import(client, keys["enrol"], data)
    assert second.json()["identities_created"] == 0 and second.json()["faces_added"] == 0
    stats = client.get("/v1/gallery/stats", headers=keys["identify"]).json()
    assert stats["identities"] == 20 and stats["faces"] == 20 and stats["index_vectors"] == 20
    assert stats["consistent"] is True and stats["faces_by_source"]["legacy"] == 20
    listed = client.get(
        "/v1/identities", params={"external_id": "legacy-7"}, headers=keys["identify"]
    )
    assert listed.json()["items"][0]["name"] == "Legacy 7"
    result = client.post("/v1/identify", files=[image_part(3)], headers=keys["identify"])
    assert len(result.json()["results"][0]["candidates"]) == 5


def test_csv_import(client: TestClient, keys: dict) -> None:
    rows = ["external_id,name," + ",".join(f"v{i}" for i in range(16))]
    rng = np.random.default_rng(1)
    for i in range(3):
        rows.append(f"c-{i},Csv {i}," + ",".join(f"{x:.5f}" for x in rng.standard_normal(16)))
    response = _import(
        client, keys["enrol"], "\n".join(rows).encode(), name="g.csv", media="text/csv"
    )
    assert response.status_code == 200, response.text
    assert response.json()["faces_added"] == 3


@pytest.mark.parametrize(
    "payload",
    [
        b"PK\x03\x04 not really a zip",
        _npz(5, old=np.full((5, 16), np.nan, np.float32)),
        _npz(5, external_id=np.array(["a", "b"])),  # wrong row count
        _npz(5, dim=8),  # wrong dimension for this gallery
    ],
    ids=["corrupt", "nan", "ragged", "wrong-dim"],
)
def test_malformed_import_is_422_and_stores_nothing(
    client: TestClient, keys: dict, payload: bytes
) -> None:
    good = _import(client, keys["enrol"], _npz(2, seed=7))  # fixes the gallery's dimension
    assert good.status_code == 200, good.text
    before = client.get("/v1/gallery/stats", headers=keys["identify"]).json()
    assert_problem(_import(client, keys["enrol"], payload), 422)
    after = client.get("/v1/gallery/stats", headers=keys["identify"]).json()

    def stored(stats: dict) -> dict:  # the background id check may finish in between
        return {k: v for k, v in stats.items() if not k.startswith("ids_")}

    assert stored(after) == stored(before) and after["faces"] == 2 and after["index_vectors"] == 2


def test_empty_and_mislabelled_imports(client: TestClient, keys: dict) -> None:
    assert_problem(_import(client, keys["enrol"], b""), 422)
    assert_problem(_import(client, keys["enrol"], _npz(2), media="image/png"), 415)
    assert_problem(_import(client, keys["identify"], _npz(2)), 403, "forbidden")
