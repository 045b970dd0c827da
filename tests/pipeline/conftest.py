"""Fixtures for the image pipeline tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import training.data.extract as extract

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


# ---------------------------------------------------------------------------------------------
# Paired extraction (test_extract.py, test_extract_flip.py): synthetic crops and two tiny sides
# ---------------------------------------------------------------------------------------------
IDENTITIES = {"alice": 4, "bob": 3, "carol": 1, "dave": 3}  # 11 images


@pytest.fixture
def crops_dir(tmp_path: Path) -> Path:
    """Synthetic 112x112 "aligned crops" under DIR/<identity>/<image>."""
    root = tmp_path / "aligned"
    rng = np.random.default_rng(0)
    for identity, count in IDENTITIES.items():
        (root / identity).mkdir(parents=True)
        for k in range(count):
            pixels = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / identity / f"{identity}_{k:04d}.png")
    (root / "alice" / "notes.txt").write_text("not an image, ignored")
    return root


@pytest.fixture
def sides(tiny_backbone: TinyBackboneFactory) -> tuple[str, str]:
    old = tiny_backbone("old-tiny", dim=8, seed=1)
    new = tiny_backbone("new-tiny", dim=6, seed=2, layout="NHWC")
    return str(old), str(new)


def run(crops_dir: Path, sides: tuple[str, str], output: Path, **options: object):
    return extract.extract_pairs(
        images_dir=crops_dir,
        old=sides[0],
        new=sides[1],
        output=output,
        aligned=True,
        batch_size=4,
        chunk_size=3,
        progress=False,
        **options,  # type: ignore[arg-type]
    )
