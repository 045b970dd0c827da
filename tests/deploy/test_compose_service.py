"""Start the service with EXACTLY the command and environment docker/compose.yaml gives the
``api`` service (after the ``migrate`` one-shot), as plain processes against the local
PostgreSQL, and wait for /readyz. No Docker engine is needed.

What differs from a container, and only that:
- the operator's ``docker/.env`` is ``.env.example`` with its placeholders replaced (what the
  operator is told to do);
- the database host ``postgres`` becomes the local server, with a fresh database and the local
  credentials (compose's own user/password exist only inside its postgres container);
- each volume's container path becomes a directory under tmp_path (what a mount does), and the
  working directory holds what the Dockerfile copies into ``/app``;
- ``--host``/``--port`` bind 127.0.0.1 and a free port (what ``ports:`` publishing does);
- executables come from this virtual environment (the image's ``/opt/venv``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from .backbone_stub import write_stand_in_backbone
from .compose_file import (
    DOCKER_DIR,
    ENV_EXAMPLE,
    REPO,
    image_env,
    interpolate_tree,
    load_compose,
    read_env_file,
    service_environment,
    volume_mounts,
)

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

READY_TIMEOUT_S = 90.0
# What the Dockerfile copies into its WORKDIR /app (besides the installed package).
APP_DIR_FILES = ("alembic.ini", "alembic")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _operator_env() -> dict[str, str]:
    """docker/.env as the operator writes it: the example with real secrets."""
    env = read_env_file(ENV_EXAMPLE)
    env["POSTGRES_PASSWORD"] = secrets.token_urlsafe(16)
    env["FACEBRIDGE_ADMIN_KEY"] = secrets.token_urlsafe(24)
    return env


@pytest.fixture()
def fresh_database(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the local server; dropped afterwards."""
    base = make_url(postgres_url)
    name = f"facebridge_deploy_{secrets.token_hex(4)}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _localise(
    env: dict[str, str], *, service: dict, database_url: str, tmp_path: Path
) -> dict[str, str]:
    compose_url = make_url(env["FACEBRIDGE_DATABASE_URL"])
    assert compose_url.host == "postgres", "compose talks to the `postgres` service"
    local = make_url(database_url)
    env["FACEBRIDGE_DATABASE_URL"] = compose_url.set(
        host=local.host,
        port=local.port,
        username=local.username,
        password=local.password,
        database=local.database,
    ).render_as_string(hide_password=False)
    for source, target in volume_mounts(service):
        host_dir = tmp_path / "volumes" / target.strip("/").replace("/", "_")
        if source.startswith((".", "/")) and (DOCKER_DIR / source).is_dir():
            shutil.copytree(DOCKER_DIR / source, host_dir, dirs_exist_ok=True)
        host_dir.mkdir(parents=True, exist_ok=True)
        for key, value in env.items():
            if value == target or value.startswith(target + "/"):
                env[key] = str(host_dir) + value[len(target) :]
    return env


def _process_env(container_env: dict[str, str]) -> dict[str, str]:
    """The image's ENV, then the service's environment on top (Docker's order). Nothing from
    this test process leaks in (no FACEBRIDGE_* of the developer's shell)."""
    env = {k: os.environ[k] for k in ("HOME", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}
    env.update(image_env(DOCKER_DIR / "Dockerfile"))
    # The image's /opt/venv/bin is this virtual environment's bin.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    return {**env, **container_env}


def _published(command: list[str], *, port: int) -> list[str]:
    out = list(command)
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        assert flag in out, f"compose api command lacks {flag}"
        out[out.index(flag) + 1] = value
    return out


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _app_dir(tmp_path: Path) -> Path:
    """The working directory: what the Dockerfile copies into /app."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    for name in APP_DIR_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, app_dir / name)
    return app_dir


def _migrate(
    migrate: dict, operator_env: dict[str, str], *, database_url: str, tmp_path: Path, app_dir: Path
) -> None:
    """Run compose's migrate one-shot and check it created the schema."""
    migrate_env = _localise(
        service_environment(migrate, compose_dir=DOCKER_DIR, env_file_values=operator_env),
        service=migrate,
        database_url=database_url,
        tmp_path=tmp_path,
    )
    done = subprocess.run(
        migrate["command"],
        env=_process_env(migrate_env),
        cwd=app_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"migrate failed:\n{done.stdout}\n{done.stderr}"
    engine = sa.create_engine(database_url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"identities", "faces", "api_keys", "alembic_version"} <= tables


def _wait_ready(process: subprocess.Popen, port: int) -> tuple[int, dict]:
    """Poll /readyz until 200, the process exits or READY_TIMEOUT_S passes: the last answer."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    status, body = 0, {}
    while time.monotonic() < deadline and process.poll() is None:
        try:
            status, body = _get(f"http://127.0.0.1:{port}/readyz")
        except (OSError, ValueError):
            status = 0
        if status == 200:
            break
        time.sleep(0.5)
    return status, body


def test_api_starts_with_the_compose_command_and_environment(
    fresh_database: str, tmp_path: Path
) -> None:
    operator_env = _operator_env()
    compose = interpolate_tree(load_compose(), operator_env)
    services = compose["services"]
    app_dir = _app_dir(tmp_path)

    # 1. migrate: the one-shot, same image, same env_file.
    _migrate(
        services["migrate"],
        operator_env,
        database_url=fresh_database,
        tmp_path=tmp_path,
        app_dir=app_dir,
    )

    # 2. api: the service process.
    api = services["api"]
    api_env = _localise(
        service_environment(api, compose_dir=DOCKER_DIR, env_file_values=operator_env),
        service=api,
        database_url=fresh_database,
        tmp_path=tmp_path,
    )
    write_stand_in_backbone(Path(api_env["FACEBRIDGE_BACKBONE_MANIFEST"]))
    port = _free_port()
    log = (tmp_path / "api.log").open("w")
    process = subprocess.Popen(
        _published(api["command"], port=port),
        env=_process_env(api_env),
        cwd=app_dir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        status, body = _wait_ready(process, port)
        output = (tmp_path / "api.log").read_text()
        assert status == 200, f"/readyz never became 200 (last {status} {body}):\n{output[-3000:]}"
        assert body["ready"] is True and body["checks"]["database"] == "ok"
        # The container health check, run the way Docker runs it (exec form, in the container).
        check = [c.replace(":8000/", f":{port}/") for c in api["healthcheck"]["test"][1:]]
        assert subprocess.run(check, env=_process_env(api_env), timeout=30).returncode == 0
        # The bootstrap admin key from docker/.env works.
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/admin/transformers",
            headers={"X-API-Key": operator_env["FACEBRIDGE_ADMIN_KEY"]},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
