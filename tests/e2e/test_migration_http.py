"""Capture over real HTTP: a uvicorn process on PostgreSQL with FACEBRIDGE_CAPTURE=confident
captures a confident match's native vector; an undo through the CLI (on the database directly)
reaches the running server through the face change log and restores its exact answers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from api.onnx_fixtures import TINY_DIM, TINY_OLD_MODEL_ID, write_tiny_backbone
from api.test_migration_api import part, write_calibrated_transformer

from service.cli import main as cli_main

from .conftest import ADMIN, Server, server_env, upload_transformer
from .test_service_processes import fresh_postgres_url  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def _answers(client: httpx.Client) -> list[list[tuple[int, float, list[str]]]]:
    out = []
    for probe in [part(s, blend=100 + s) for s in range(4)]:
        reply = client.post(
            "/v1/identify", files=[probe], params={"capture": "false"}, headers=ADMIN
        )
        assert reply.status_code == 200, reply.text
        found = reply.json()["results"][0]["candidates"]
        out.append([(c["identity_id"], c["score"], c["spaces"]) for c in found])
    return out


def _native_vectors(client: httpx.Client) -> float:
    """The running server's native store size, from its Prometheus gauge."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('facebridge_gallery_space_vectors{space="tiny-backbone-16"}'):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def _captures(client: httpx.Client) -> int:
    return client.get("/v1/migration", headers=ADMIN).json()["captures_total"]


def test_capture_over_http_and_undo_from_the_cli(
    tmp_path: Path,
    servers: list[Server],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database_url = request.getfixturevalue("fresh_postgres_url")
    env = server_env(
        tmp_path / "server",
        manifest=write_tiny_backbone(tmp_path / "backbone"),
        gallery_model_id=TINY_OLD_MODEL_ID,
        database_url=database_url,
        FACEBRIDGE_GALLERY_DIM=str(TINY_DIM),
        FACEBRIDGE_FACE_CHECK="off",
        FACEBRIDGE_CAPTURE="confident",
    )
    server = Server(workdir=tmp_path / "server", env=env)
    servers.append(server)
    server.start()
    with server.client() as client:
        upload_transformer(client, write_calibrated_transformer(tmp_path / "t.onnx"), activate=True)
        ids = []
        for seed in range(4):
            identity = client.post("/v1/identities", json={"name": f"p{seed}"}, headers=ADMIN)
            ids.append(identity.json()["id"])
            enrol = client.post(
                f"/v1/identities/{ids[-1]}/faces", files=[part(seed)], headers=ADMIN
            )
            assert enrol.status_code == 201, enrol.text
        before = _answers(client)
        reply = client.post("/v1/identify", files=[part(2, blend=7)], headers=ADMIN)
        assert reply.json()["results"][0]["match"]["identity_id"] == ids[2]
        assert _captures(client) == 1 and _answers(client) != before
        assert _native_vectors(client) == 5.0
        status = client.get("/v1/migration", headers=ADMIN).json()
        assert status["capture"] == "confident" and status["captures_per_day"][-1]["captures"] == 1
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert cli_main(["migration", "undo", "--identity", str(ids[2])]) == 0
        assert json.loads(capsys.readouterr().out)["faces_removed"] == 1
        deadline = time.monotonic() + 20
        while _native_vectors(client) != 4.0 and time.monotonic() < deadline:
            time.sleep(0.3)  # the server's poller applies the change log
        assert _native_vectors(client) == 4.0
        assert _answers(client) == before and _captures(client) == 0
