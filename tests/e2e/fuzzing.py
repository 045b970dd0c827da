"""Schemathesis over the served OpenAPI document of a REAL server, with an admin key (shared by
tests/e2e/test_schemathesis.py and bench/schemathesis_run.py).

The server runs the tiny synthetic models with a transformer active, one enrolled identity
and the failed-auth limit off (Schemathesis' ``ignored_auth`` check sends keyless requests on
purpose). Requests are counted on the server side, from its own
``facebridge_http_requests_total`` by status, so the figure is what the server answered.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from .conftest import ADMIN, ADMIN_KEY, Server, start_tiny_server

_METRIC = re.compile(r"^facebridge_http_requests_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


# Revoking keys runs last, on its own: with ``confirm=true`` the admin key may revoke itself
# (on purpose, the API allows it), which would turn every later request into a 401.
LAST_OPERATIONS = ("revokeApiKey",)
_FAILURE_LINE = re.compile(r"❌ (ST\d+) (.+): (\d+)$")
_OPERATION_LINE = re.compile(r"^_{3,} (.+?) _{3,}$")
_CASE_LINE = re.compile(r"^- (ST\d+) ")


@dataclass
class FuzzResult:
    statuses: Counter[str]  # HTTP status -> requests, as the server counted them
    failures: Counter[str]  # "ST202 Schema-valid request rejected" -> count, all passes
    operations: dict[str, set[str]]  # "ST202" -> the operations it was found on
    exit_codes: list[int]
    output: str

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("5"))


def _statuses(url: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        match = _METRIC.match(line)
        if match:
            status = re.search(r'status="(\d+)"', match["labels"])
            route = re.search(r'route="([^"]*)"', match["labels"])
            if status and route and route.group(1) != "/metrics":
                counts[status.group(1)] += int(float(match["value"]))
    return counts


def start_fuzz_server(workdir: Path) -> Server:
    from api.onnx_fixtures import png_bytes

    server = start_tiny_server(
        workdir, FACEBRIDGE_AUTH_FAILURE_LIMIT="0", FACEBRIDGE_LOG_LEVEL="error"
    )
    with server.client() as client:
        person = client.post("/v1/identities", json={"external_id": "p-1"}, headers=ADMIN)
        files = [("image", ("1.png", png_bytes(1), "image/png"))]
        client.post(f"/v1/identities/{person.json()['id']}/faces", files=files, headers=ADMIN)
    return server


def run_schemathesis(
    server: Server,
    *,
    max_examples: int,
    seed: int = 11,
    checks: str = "all",
    workers: int = 1,
    max_time_s: int | None = None,
    timeout_s: float = 3600,
) -> FuzzResult:
    """``st run`` (all phases) over the server's /openapi.json, in two passes (everything, then
    :data:`LAST_OPERATIONS`), each bounded by ``max_examples`` per operation (and ``max_time_s``
    when given, for the first pass: fuzzing and stateful testing then repeat until it is spent);
    statuses counted by the server."""
    st = Path(sys.executable).with_name("st")
    before = _statuses(server.url)
    common = [
        f"{server.url}/openapi.json",
        "--header",
        f"X-API-Key: {ADMIN_KEY}",
        "--checks",
        checks,
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        str(workers),
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    budget = [] if max_time_s is None else ["--max-time", str(max_time_s)]
    outputs, codes, failures = [], [], Counter[str]()
    operations: dict[str, set[str]] = {}
    for selection in (
        [*budget, *(f"--exclude-operation-id={op}" for op in LAST_OPERATIONS)],
        [f"--include-operation-id={op}" for op in LAST_OPERATIONS],
    ):
        completed = subprocess.run(
            [str(st), "run", *common, *selection],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd=server.workdir,  # Schemathesis keeps a cache in its working directory
        )
        output = completed.stdout + completed.stderr
        outputs.append(output)
        codes.append(completed.returncode)
        operation = "?"
        for line in output.splitlines():
            match = _FAILURE_LINE.search(line.strip())
            if match:
                failures[f"{match[1]} {match[2]}"] += int(match[3])
            if found := _OPERATION_LINE.match(line.strip()):
                operation = found[1]
            if case := _CASE_LINE.match(line.strip()):
                operations.setdefault(case[1], set()).add(operation)
    after = _statuses(server.url)
    statuses = Counter({k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)})
    return FuzzResult(
        statuses=statuses,
        failures=failures,
        operations=operations,
        exit_codes=codes,
        output="\n".join(outputs),
    )
