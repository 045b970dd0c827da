"""Issue 11 (hardening): FAISS/OpenMP threads are fixed for the whole process at start, so
threads the service did not set up itself (pollers, Starlette's worker threads, any later
thread) do not use every core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import json, sys, threading, time
from fastapi.testclient import TestClient
from service.app import create_app
from service.startup import wait_until_started
from service.settings import ServiceSettings

root = sys.argv[1]
settings = ServiceSettings(
    database_url=f"sqlite:///{root}/fb.db", data_dir=f"{root}/var", detector="none",
    faiss_threads=1, generation_poll_seconds=0.05,
)
app = create_app(settings)
seen = {}
with TestClient(app) as client:
    state = wait_until_started(app)
    import faiss
    def record(name):
        seen[name] = faiss.omp_get_max_threads()
    state.gallery_poller.tasks.append(lambda: record("poller"))
    thread = threading.Thread(target=record, args=("new thread",))
    thread.start(); thread.join()
    deadline = time.monotonic() + 10
    while "poller" not in seen and time.monotonic() < deadline:
        time.sleep(0.05)
print(json.dumps(seen))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2+ cores to tell 1 thread apart")
def test_every_thread_of_the_service_uses_the_configured_faiss_threads(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"new thread": 1, "poller": 1}, seen
