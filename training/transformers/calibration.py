"""The recommended decision threshold written into an exported transformer's metadata.

How: on the BRIDGE rows (what the transformer was fitted on; eval rows are never used), take
every (mapped probe i, old vector j) pair of different identities as an impostor score, and pick
the cosine that only a fraction ``far`` (default 1e-3) of impostors exceed. Mapped and old vectors
are the unit vectors the service compares (the runner normalises the mapped side).
"""

from __future__ import annotations

import numpy as np

MAX_ROWS = 4000  # 16M impostor scores at most; above that a seeded subsample


def threshold_at_far(
    *,
    mapped: np.ndarray,
    old: np.ndarray,
    label: np.ndarray,
    far: float = 1e-3,
    seed: int = 0,
) -> float:
    """Cosine at which the impostor accept rate between ``mapped`` and ``old`` is ``far``.

    ``mapped`` and ``old`` are unit vectors [n, d] row-aligned with ``label``.
    """
    n = label.shape[0]
    rows = np.arange(n)
    if n > MAX_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=MAX_ROWS, replace=False))
    m, o, lab = mapped[rows], old[rows], label[rows]
    scores = m @ o.T
    impostor = scores[lab[:, None] != lab[None, :]]
    if impostor.size == 0:
        raise ValueError("no impostor pairs: need at least two identities")
    return float(np.quantile(impostor, 1.0 - far))
