"""Shared fixtures. The kit is read-only: tests read it and never write into it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.kit import find_kit_dir

POSTGRES_URL_ENV = "FACEBRIDGE_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none here")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def kit_dir() -> Path:
    """The sample kit, or a skip that says why."""
    kit = find_kit_dir()
    if kit is None:
        pytest.skip("sample kit absent: set FACEBRIDGE_KIT_DIR or place it at ../shared/kit")
    return kit


@pytest.fixture(scope="session")
def kit_pairs_file(kit_dir: Path) -> Path:
    return kit_dir / "lfw" / "pairs.npz"


@pytest.fixture(scope="session")
def kit_manifest(kit_dir: Path) -> Path:
    return kit_dir / "models" / "mobilefacenet.json"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A reachable PostgreSQL URL. In CI (CI=true) an unreachable server fails the test."""
    url = os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL unreachable at {url}: {type(exc).__name__}")
    return url
