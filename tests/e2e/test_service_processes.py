"""Real uvicorn processes with tiny synthetic models (no kit): crash + restart durability,
PostgreSQL, and two workers on one database converging."""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from api.onnx_fixtures import (
    TINY_DIM,
    TINY_OLD_MODEL_ID,
    png_bytes,
    random_rotation,
    write_matrix_transformer,
    write_tiny_backbone,
)

from .conftest import (
    ADMIN,
    Server,
    import_gallery,
    post_until_answered,
    server_env,
    upload_transformer,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "manifest": write_tiny_backbone(root / "backbone"),
        "t1": write_matrix_transformer(root / "t1.onnx", matrix=random_rotation(TINY_DIM, seed=1)),
        "t2": write_matrix_transformer(root / "t2.onnx", matrix=random_rotation(TINY_DIM, seed=2)),
    }


def _tiny_server(workdir: Path, models: dict[str, Path], **env: str) -> Server:
    return Server(
        workdir=workdir,
        env=server_env(
            workdir,
            manifest=models["manifest"],
            gallery_model_id=TINY_OLD_MODEL_ID,
            FACEBRIDGE_GALLERY_DIM=str(TINY_DIM),
            FACEBRIDGE_FACE_CHECK="off",  # the tiny backbone's inputs are noise, not faces
            **env,
        ),
    )


def _identify_top(client: httpx.Client, seed: int) -> dict:
    files = [("image", (f"{seed}.png", png_bytes(seed), "image/png"))]
    response = client.post("/v1/identify", files=files, params={"top_k": 1}, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def test_sigkill_during_enrolments_loses_nothing_acknowledged(
    tiny_models: dict[str, Path], tmp_path: Path, servers: list[Server]
) -> None:
    server = _tiny_server(tmp_path, tiny_models, FACEBRIDGE_MAX_UPLOAD_BYTES=str(1 << 20))
    servers.append(server)
    server.start()
    with server.client() as client:
        upload_transformer(client, tiny_models["t1"], activate=True)
    # Upload limit on a real socket: a 256 MB chunked body is cut off near the 1 MB limit.
    status, sent = post_until_answered(server, "/v1/identify", total=256 << 20)
    assert status == 413 and sent < 32 << 20

    acknowledged: list[tuple[int, int, int]] = []  # (seed, identity id, face id)
    lock = threading.Lock()
    stop = threading.Event()

    def enrol_stream(first_seed: int) -> None:
        seed = first_seed
        with server.client(timeout=10.0) as client:
            while not stop.is_set():
                try:
                    created = client.post(
                        "/v1/identities", json={"external_id": f"p-{seed}"}, headers=ADMIN
                    )
                    if created.status_code != 201:
                        return
                    identity_id = created.json()["id"]
                    files = [("image", (f"{seed}.png", png_bytes(seed), "image/png"))]
                    face = client.post(
                        f"/v1/identities/{identity_id}/faces", files=files, headers=ADMIN
                    )
                except httpx.HTTPError:
                    return  # the server died under us: expected
                if face.status_code == 201:
                    with lock:
                        acknowledged.append((seed, identity_id, face.json()["faces"][0]["id"]))
                seed += 2

    workers = [threading.Thread(target=enrol_stream, args=(s,)) for s in (1000, 1001)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()  # SIGKILL mid-stream: no lifespan shutdown, no index save
    stop.set()
    for worker in workers:
        worker.join()
    assert len(acknowledged) >= 40

    server.start()  # waits for /readyz, which requires FAISS == SQL
    with server.client() as client:
        stats = client.get("/v1/gallery/stats", headers=ADMIN).json()
        assert stats["consistent"] is True
        assert stats["faces"] == stats["index_vectors"] >= len(acknowledged)
        for seed, identity_id, face_id in acknowledged:
            detail = client.get(f"/v1/identities/{identity_id}", headers=ADMIN)
            assert detail.status_code == 200, (seed, detail.text)
            assert face_id in {f["id"] for f in detail.json()["faces"]}
        for seed, identity_id, _ in acknowledged[:: max(1, len(acknowledged) // 5)]:
            top = _identify_top(client, seed)
            assert top["match"]["identity_id"] == identity_id  # FAISS really has it


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A new, uniquely named database on the test server, dropped afterwards."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    name = f"facebridge_e2e_{uuid.uuid4().hex[:12]}"
    admin_engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin_engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin_engine.dispose()


@pytest.mark.postgres
def test_basic_flow_on_postgres(
    tiny_models: dict[str, Path], tmp_path: Path, servers: list[Server], fresh_postgres_url: str
) -> None:
    server = _tiny_server(tmp_path, tiny_models, FACEBRIDGE_DATABASE_URL=fresh_postgres_url)
    servers.append(server)
    server.start()
    with server.client() as client:
        version = upload_transformer(client, tiny_models["t1"], activate=True)["version"]
        buf = io.BytesIO()
        rng = np.random.default_rng(5)
        np.savez(
            buf,
            old=rng.standard_normal((30, TINY_DIM)).astype(np.float32),
            external_id=np.array([f"legacy-{i}" for i in range(30)]),
        )
        gallery = tmp_path / "legacy.npz"
        gallery.write_bytes(buf.getvalue())
        assert import_gallery(client, gallery)["faces_added"] == 30
        assert import_gallery(client, gallery)["faces_added"] == 0  # idempotent
        identity = client.post("/v1/identities", json={"name": "Pat"}, headers=ADMIN).json()
        files = [("image", ("pat.png", png_bytes(7), "image/png"))]
        enrolled = client.post(f"/v1/identities/{identity['id']}/faces", files=files, headers=ADMIN)
        assert enrolled.status_code == 201, enrolled.text
        top = _identify_top(client, 7)
        assert top["match"]["identity_id"] == identity["id"] and top["transformer"] == version
        stats = client.get("/v1/gallery/stats", headers=ADMIN).json()
        assert stats["faces"] == 31 and stats["consistent"] is True
    server.stop()
    server.start()  # the index is rebuilt/reconciled from Postgres
    with server.client() as client:
        assert _identify_top(client, 7)["match"]["identity_id"] == identity["id"]


def _wait_for(predicate, timeout: float = 10.0) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s")


def _two_servers(
    tmp_path: Path, models: dict[str, Path], servers: list[Server], database_url: str
) -> tuple[Server, Server]:
    """Two started servers on one database and one transformer store, own index files."""
    shared = {
        "FACEBRIDGE_DATABASE_URL": database_url,
        "FACEBRIDGE_TRANSFORMERS_DIR": str(tmp_path / "transformers"),
    }
    a = _tiny_server(tmp_path / "a", models, **shared)
    b = _tiny_server(tmp_path / "b", models, **shared)
    servers.extend([a, b])
    a.start()
    b.start()
    return a, b


def test_two_workers_on_one_database_converge(
    tiny_models: dict[str, Path], tmp_path: Path, servers: list[Server]
) -> None:
    a, b = _two_servers(tmp_path, tiny_models, servers, f"sqlite:///{tmp_path / 'shared.db'}")
    with a.client() as on_a, b.client() as on_b:
        v1 = upload_transformer(on_a, tiny_models["t1"], activate=True)["version"]
        v2 = upload_transformer(on_a, tiny_models["t2"], activate=False)["version"]

        def b_serves(version: str) -> bool:
            return on_b.get("/readyz").json()["checks"]["transformer"] == version

        _wait_for(lambda: b_serves(v1))
        assert on_a.post(f"/v1/admin/transformers/{v2}/activate", headers=ADMIN).status_code == 200
        took = _wait_for(lambda: b_serves(v2))
        print(f"\nworker B followed the activation on A after {took:.2f}s")

        identity = on_a.post("/v1/identities", json={"name": "Quinn"}, headers=ADMIN).json()
        files = [("image", ("q.png", png_bytes(11), "image/png"))]
        assert (
            on_a.post(
                f"/v1/identities/{identity['id']}/faces", files=files, headers=ADMIN
            ).status_code
            == 201
        )

        def b_finds_quinn() -> bool:
            top = _identify_top(on_b, 11)
            return top["match"] is not None and top["match"]["identity_id"] == identity["id"]

        _wait_for(b_finds_quinn)
        assert _identify_top(on_b, 11)["transformer"] == v2


@pytest.mark.postgres
def test_two_replicas_on_postgres_follow_the_change_log(
    tiny_models: dict[str, Path], tmp_path: Path, servers: list[Server], fresh_postgres_url: str
) -> None:
    """Replica B learns of an enrolment on replica A from the face change log (no full id
    comparison, no hot revision row): searchable on B within 2 s."""
    a, b = _two_servers(tmp_path, tiny_models, servers, fresh_postgres_url)
    with a.client() as on_a, b.client() as on_b:
        version = upload_transformer(on_a, tiny_models["t1"], activate=True)["version"]
        _wait_for(lambda: on_b.get("/readyz").json()["checks"]["transformer"] == version)
        gallery = tmp_path / "legacy.npz"
        rng = np.random.default_rng(9)
        np.savez(
            gallery,
            old=rng.standard_normal((200, TINY_DIM)).astype(np.float32),
            external_id=np.array([f"legacy-{i}" for i in range(200)]),
        )
        assert import_gallery(on_a, gallery)["faces_added"] == 200
        _wait_for(lambda: on_b.get("/v1/gallery/stats", headers=ADMIN).json()["faces"] == 200)
        _wait_for(lambda: on_b.get("/readyz").status_code == 200)
        identity = on_a.post("/v1/identities", json={"name": "Rae"}, headers=ADMIN).json()
        files = [("image", ("r.png", png_bytes(21), "image/png"))]
        enrolled = on_a.post(f"/v1/identities/{identity['id']}/faces", files=files, headers=ADMIN)
        assert enrolled.status_code == 201, enrolled.text
        started = time.monotonic()

        def b_finds_rae() -> bool:
            top = _identify_top(on_b, 21)
            return top["match"] is not None and top["match"]["identity_id"] == identity["id"]

        _wait_for(b_finds_rae, timeout=10.0)
        took = time.monotonic() - started
        print(f"\nreplica B could identify the enrolment on A after {took:.2f}s")
        assert took < 2.0
        stats_a = on_a.get("/v1/gallery/stats", headers=ADMIN).json()
        stats_b = on_b.get("/v1/gallery/stats", headers=ADMIN).json()
        assert stats_a["faces"] == stats_b["faces"] == stats_b["index_vectors"] == 201
        assert stats_b["consistent"] is True and stats_b["change_log_position"] >= 201
