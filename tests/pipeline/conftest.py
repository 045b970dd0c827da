"""Fixtures for the image pipeline tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
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


@pytest.fixture(scope="module")
def kit_rows(kit_dir: Path) -> dict[str, np.ndarray]:
    """The kit's per-row columns the pipeline tests compare with."""
    with np.load(kit_dir / "lfw" / "pairs.npz") as z:
        return {k: z[k] for k in ("path", "old", "new", "landmarks5", "detected")}
