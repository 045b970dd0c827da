"""Issue 11 (hardening): Schemathesis, every check, over the served OpenAPI document of a real
server with an admin key: 0 server errors. The bench (bench/schemathesis_run.py) runs the same
for longer (>= 2,000 requests); this test keeps a bounded example count and time budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from .fuzzing import run_schemathesis, start_fuzz_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The data-acceptance checks Schemathesis may still report, and why they are not defects: a
# multipart file's CONTENT (an ONNX model, an image, a gallery file) cannot be described by the
# schema, so random bytes are "schema-valid" yet unusable (ST202, a correct 422); a null form
# field cannot be sent in multipart (Schemathesis sends the string "null"); and a batch identify
# answers a part it cannot use with that image's own error inside a 200 (ST201 when the schema
# generator counts the part as invalid). Everything else (a 5xx, an undocumented status, a
# header or content-type mismatch...) fails the test.
ACCEPTED = {"ST202 Schema-valid request rejected", "ST201 Schema-violating request accepted"}


def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    pytest.importorskip("schemathesis")
    server = start_fuzz_server(tmp_path)
    try:
        result = run_schemathesis(server, max_examples=25, workers=2, max_time_s=20)
    finally:
        server.kill()
    print(f"schemathesis: {result.requests} requests, statuses {dict(result.statuses)}")
    # A floor, not a speed target: it fails only if Schemathesis barely ran (an idle 2-core
    # machine sends ~700 in the 20 s budget; a loaded one ~450).
    assert result.requests >= 250, result.output[-3000:]
    assert result.server_errors == 0, result.output[-6000:]
    assert set(result.failures) <= ACCEPTED, result.output[-6000:]
