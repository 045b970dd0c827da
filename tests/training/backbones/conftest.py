"""Fixtures for the backbone tests: a tiny synthetic face folder and a tiny trained run.

Everything is tiny on purpose (an r18 of width 8 at 32 x 32, 64-d output, 16 images) so the
whole folder runs in well under a minute on two shared cores.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from training.backbones.config import TrainConfig  # noqa: E402
from training.backbones.train import TrainResult, train_backbone  # noqa: E402

N_IDENTITIES = 4
IMAGES_PER_IDENTITY = 4
SIZE = 112


def tiny_config(**overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "arch": "r18",
        "width": 8,
        "embedding_dim": 64,
        "input_size": 32,
        "batch_size": 16,
        "epochs": 6,
        "lr": 0.05,
        "scale": 16.0,
        "margin": 0.2,
        "flip": 0.0,
        "num_workers": 0,
        "log_every": 1,
        "threads": 1,
    }
    values.update(overrides)
    return TrainConfig.model_validate(values)


def synthetic_faces(rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Per identity a fixed random colour pattern; its images add noise to it (learnable)."""
    samples = []
    for label in range(N_IDENTITIES):
        base = rng.uniform(0, 255, size=(8, 8, 3))
        pattern = np.kron(base, np.ones((SIZE // 8, SIZE // 8, 1)))
        for _ in range(IMAGES_PER_IDENTITY):
            noisy = pattern + rng.normal(0, 20, size=pattern.shape)
            samples.append((np.clip(noisy, 0, 255).astype(np.uint8), label))
    return samples


def jpeg_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``n`` torch threads inside, the previous count restored after (nothing leaks out)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def _one_thread_module() -> Iterator[None]:
    # On shared, busy cores one thread is far faster than several spinning against each other.
    # Module scope so the module fixtures (the export) run with it too.
    with torch_threads(1):
        yield


@pytest.fixture(autouse=True)
def _one_thread(_one_thread_module: None) -> Iterator[None]:
    # CLI commands and training runs set their own thread count in this same process.
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def face_samples() -> list[tuple[np.ndarray, int]]:
    return synthetic_faces(np.random.default_rng(0))


@pytest.fixture(scope="session")
def face_folder(tmp_path_factory: pytest.TempPathFactory, face_samples: list) -> Path:
    root = tmp_path_factory.mktemp("faces")
    for i, (image, label) in enumerate(face_samples):
        folder = root / f"person_{label:02d}"
        folder.mkdir(exist_ok=True)
        (folder / f"img_{i:03d}.jpg").write_bytes(jpeg_bytes(image))
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, face_folder: Path) -> TrainResult:
    out = tmp_path_factory.mktemp("run")
    with torch_threads(1):
        return train_backbone(data=face_folder, output=out, config=tiny_config(), progress=False)
