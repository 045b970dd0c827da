"""Identity-structured synthetic gallery vectors with the kit's old-space statistics.

Generator (stated in every bench that uses it): identity centres c ~ N(mu, B) and samples
x = normalise(c + e), e ~ N(0, W), where mu, B (between-identity covariance of the identity
means, less the within-identity part) and W (pooled within-identity covariance) are fitted on
the kit's OLD-model (dlib, 128-d) vectors of identities with >= 2 images. Without the kit:
isotropic B and W with the kit's measured totals (mean norm 0.913, between-centre RMS 0.370,
within-identity RMS 0.216), stated as such. Row r belongs to identity r // per_identity;
chunk c of rows is generated from its own seed, so any chunk can be regenerated alone (10M rows
never need to be held in memory); queries are fresh samples of enrolled identities.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK_ROWS = 40_000
KIT_MEAN_NORM, KIT_BETWEEN_RMS, KIT_WITHIN_RMS = 0.913, 0.370, 0.216


def _kit_pairs() -> Path | None:
    root = Path(os.environ.get("FACEBRIDGE_KIT_DIR", Path(__file__).parents[1] / "../shared/kit"))
    path = root / "lfw" / "pairs.npz"
    return path if path.is_file() else None


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))).astype(np.float32)


@dataclass
class GalleryGenerator:
    mu: np.ndarray
    between: np.ndarray  # [d, d] square root of B
    within: np.ndarray  # [d, d] square root of W
    per_identity: int = 4
    seed: int = 0
    source: str = ""

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @classmethod
    def fitted(cls, *, per_identity: int = 4, seed: int = 0) -> GalleryGenerator:
        path = _kit_pairs()
        if path is None:
            d = 128
            mu = np.zeros(d, np.float32)
            mu[0] = KIT_MEAN_NORM
            return cls(
                mu=mu,
                between=np.eye(d, dtype=np.float32) * KIT_BETWEEN_RMS / np.sqrt(d),
                within=np.eye(d, dtype=np.float32) * KIT_WITHIN_RMS / np.sqrt(d),
                per_identity=per_identity,
                seed=seed,
                source="SYNTHETIC (kit absent): isotropic with the kit's measured spreads",
            )
        with np.load(path, allow_pickle=False) as z:
            old, labels = z["old"].astype(np.float64), z["label"]
        old /= np.linalg.norm(old, axis=1, keepdims=True)
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        means = np.zeros((counts.size, old.shape[1]))
        np.add.at(means, inverse, old)
        means /= counts[:, None]
        multi = counts[inverse] >= 2
        residual = (old - means[inverse])[multi]
        residual *= np.sqrt(counts[inverse][multi] / (counts[inverse][multi] - 1))[:, None]
        within = residual.T @ residual / residual.shape[0]
        centres = means[counts >= 2]
        between = np.cov(centres.T) - within * float(np.mean(1.0 / counts[counts >= 2]))
        return cls(
            mu=centres.mean(0).astype(np.float32),
            between=_psd_sqrt(between),
            within=_psd_sqrt(within),
            per_identity=per_identity,
            seed=seed,
            source=f"fitted on the kit's old-model vectors ({path}; "
            f"{int((counts >= 2).sum())} identities with >= 2 images)",
        )

    def _centres(self, first: int, count: int) -> np.ndarray:
        """Centres of identities [first, first + count), from per-block seeds."""
        block = CHUNK_ROWS // self.per_identity
        out = []
        for b in range(first // block, (first + count - 1) // block + 1):
            rng = np.random.default_rng([self.seed, 1, b])
            centres = self.mu + rng.standard_normal((block, self.dim), np.float32) @ self.between.T
            lo, hi = max(first, b * block) - b * block, min(first + count, (b + 1) * block)
            out.append(centres[lo : hi - b * block])
        return np.concatenate(out).astype(np.float32)

    def _sample(self, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = centres + rng.standard_normal(centres.shape, np.float32) @ self.within.T
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, vectors) chunks of CHUNK_ROWS rows; row r -> identity r // per_identity."""
        for start in range(0, rows, CHUNK_ROWS):
            stop = min(rows, start + CHUNK_ROWS)
            identity = np.arange(start, stop) // self.per_identity
            centres = self._centres(int(identity[0]), int(identity[-1] - identity[0] + 1))
            rng = np.random.default_rng([self.seed, 2, start // CHUNK_ROWS])
            yield start, self._sample(centres[identity - identity[0]], rng)

    def head(self, rows: int) -> np.ndarray:
        return np.concatenate([v for _, v in self.chunks(rows)])

    def queries(self, n: int, *, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(fresh samples [n, d], their identity ids) of identities enrolled in ``rows`` rows."""
        rng = np.random.default_rng([self.seed, 3])
        identities = rng.integers(0, max(1, rows // self.per_identity), n)
        centres = np.stack([self._centres(int(i), 1)[0] for i in identities])
        return self._sample(centres, np.random.default_rng([self.seed, 4])), identities

    def identity_of(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows) // self.per_identity
