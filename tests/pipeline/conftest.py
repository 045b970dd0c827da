"""Fixtures for the image pipeline tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .onnx_models import write_tiny_backbone

TinyBackboneFactory = Callable[..., Path]


@pytest.fixture
def tiny_backbone(tmp_path: Path) -> TinyBackboneFactory:
    """Factory: ``make(name="tiny", manifest={...}, **model)`` -> a manifest path in tmp_path."""

    def make(name: str = "tiny", manifest: dict | None = None, **model: object) -> Path:
        return write_tiny_backbone(tmp_path, name, manifest, **model)

    return make


@pytest.fixture(scope="session")
def dlib_detector() -> object:
    """One DlibDetector for the session (loading the 68-point model takes ~1 s)."""
    from service.inference.detect import dlib_available, make_detector

    if not dlib_available():
        pytest.skip("dlib or face_recognition_models not installed")
    return make_detector("dlib")
