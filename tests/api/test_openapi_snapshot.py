"""A snapshot of the OpenAPI document: any change to routes, schemas, operationIds or examples
shows up as a diff of tests/api/openapi.json in review (operationIds and examples themselves are
checked in test_openapi_examples.py).

After an intended API change, regenerate the snapshot and commit it:

    FACEBRIDGE_UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest tests/api/test_openapi_snapshot.py
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import pytest

from service.app import create_app
from service.settings import ServiceSettings

SNAPSHOT = Path(__file__).with_name("openapi.json")
UPDATE_ENV = "FACEBRIDGE_UPDATE_SNAPSHOT"
REGENERATE = f"{UPDATE_ENV}=1 .venv/bin/python -m pytest tests/api/test_openapi_snapshot.py"


def render_openapi() -> str:
    """The document the service serves at /openapi.json, as stable text (defaults only: the
    schema does not depend on settings; building the app starts nothing)."""
    app = create_app(ServiceSettings())
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_openapi_matches_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    update = os.environ.get(UPDATE_ENV) == "1"
    for name in list(os.environ):
        if name.startswith("FACEBRIDGE_"):
            monkeypatch.delenv(name)
    current = render_openapi()
    if update:
        SNAPSHOT.write_text(current)
    stored = SNAPSHOT.read_text() if SNAPSHOT.is_file() else ""
    if stored != current:
        diff = difflib.unified_diff(
            stored.splitlines(), current.splitlines(), "openapi.json (snapshot)", "now", lineterm=""
        )
        shown = "\n".join(list(diff)[:80])
        pytest.fail(
            f"the OpenAPI document changed; if intended, regenerate with:\n  {REGENERATE}\n{shown}"
        )
