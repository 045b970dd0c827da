"""Synthetic data: a clearly-labelled stand-in for faces when the kit is absent, and the two
randomly initialised backbones that stand in for the old and the new model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from service.contracts import SPLIT_BRIDGE, SPLIT_EVAL


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """How many synthetic people and images. Bridge people train the transformer; eval people
    with several images give a gallery template + probes; eval people with one image are
    distractors (docs/PROTOCOL.md)."""

    bridge_identities: int = 150
    bridge_images: int = 3
    eval_identities: int = 20
    eval_images: int = 4
    distractors: int = 10
    # iResNet-18 at a quarter of the published width (64): the random stand-ins only need to be
    # real iResNets, and this keeps the synthetic build near two minutes on two CPU cores.
    arch: str = "r18"
    width: int = 16
    embedding_dim: int = 128
    old_seed: int = 1
    new_seed: int = 2
    data_seed: int = 0
    # Export parity batches of the random backbones (1, 7, 256 as for any export; tests use fewer).
    parity_batches: tuple[int, ...] = (1, 7, 256)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def synthetic_person_pattern(rng: np.random.Generator, *, size: int = 112) -> np.ndarray:
    """One synthetic person's base pattern (float32 HxWx3): a background colour plus one grating
    (frequency, orientation). Five numbers per person: two random backbones then see a smooth,
    low-dimensional family that a closed-form transformer can learn to map across from about a
    hundred bridge people (measured here: ridge reaches 80-90% top-1 on unseen people)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    image = np.zeros((size, size, 3), np.float32) + rng.uniform(60, 190, size=3).astype(np.float32)
    freq, theta = rng.uniform(1.5, 4.0), rng.uniform(0, np.pi)
    grating = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)))
    image += (50.0 * grating)[..., None]
    return image


def synthetic_view(pattern: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 'photo' of a synthetic person: shifted by up to 2 px, brightness and pixel noise."""
    dx, dy = rng.integers(-2, 3, size=2)
    image = np.roll(pattern, (int(dy), int(dx)), axis=(0, 1))
    image = image + rng.uniform(-6, 6) + rng.normal(0.0, 4.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_synthetic_faces(*, root: Path, spec: SyntheticSpec) -> dict[str, str]:
    """Write ``root/<person>/<person>_NNNN.png`` (112x112 RGB). Returns person -> split."""
    from PIL import Image

    rng = np.random.default_rng(spec.data_seed)
    plan: list[tuple[str, int]] = []
    plan += [(SPLIT_BRIDGE, spec.bridge_images)] * spec.bridge_identities
    plan += [(SPLIT_EVAL, spec.eval_images)] * spec.eval_identities
    plan += [(SPLIT_EVAL, 1)] * spec.distractors
    splits: dict[str, str] = {}
    root.mkdir(parents=True, exist_ok=True)
    for index, (split, n_images) in enumerate(plan):
        person = f"synthetic-person-{index:03d}"
        splits[person] = split
        pattern = synthetic_person_pattern(rng)
        (root / person).mkdir(exist_ok=True)
        for j in range(n_images):
            Image.fromarray(synthetic_view(pattern, rng)).save(
                root / person / f"{person}_{j + 1:04d}.png"
            )
    return splits


def init_backbone(*, output: Path, spec: SyntheticSpec, seed: int, role: str) -> Path:
    """A randomly initialised iResNet exported to ONNX with its manifest."""
    from training.backbones.config import TrainConfig
    from training.backbones.export import export_random_backbone

    config = TrainConfig(arch=spec.arch, width=spec.width, embedding_dim=spec.embedding_dim)  # type: ignore[arg-type]
    report = export_random_backbone(
        output,
        seed=seed,
        config=config,
        model_id=f"synthetic-{role}-iresnet-{spec.arch}-w{spec.width}-seed{seed}",
        parity_batches=spec.parity_batches,
    )
    return Path(report.manifest_path)
