"""Closed-form maps (NumPy, seconds): ridge regression and orthogonal Procrustes.

Each returns ``(weight [d_new, d_old], bias [d_old])`` so that ``mapped = new @ weight + bias``.
Inputs are the normalised training pairs (see :func:`training.transformers.data.normalized_pairs`).
"""

from __future__ import annotations

import numpy as np

from service.errors import InvalidInput


def ridge_map(
    new: np.ndarray,
    old: np.ndarray,
    *,
    lam: float = 1e-2,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(Weighted) least squares with an L2 penalty ``lam`` on the weight (not the bias).

    lam=0 and no weights is OLS. ``sample_weight`` [n] (normalised to mean 1) weights rows.
    """
    if lam < 0:
        raise InvalidInput(f"ridge lambda must be >= 0, got {lam}")
    x = np.asarray(new, dtype=np.float64)
    y = np.asarray(old, dtype=np.float64)
    w = np.ones(x.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    w = w / w.mean()
    x_mean = (w[:, None] * x).sum(axis=0) / w.sum()
    y_mean = (w[:, None] * y).sum(axis=0) / w.sum()
    root = np.sqrt(w)[:, None]
    xc, yc = (x - x_mean) * root, (y - y_mean) * root
    gram = xc.T @ xc + lam * np.eye(x.shape[1])
    # lstsq rather than solve: a rank-deficient gram (lam=0, few rows) still gets the min-norm map.
    weight = np.linalg.lstsq(gram, xc.T @ yc, rcond=None)[0]
    bias = y_mean - x_mean @ weight
    return weight.astype(np.float32), bias.astype(np.float32)


def procrustes_map(new: np.ndarray, old: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (semi-)orthogonal ``W`` minimising ||(new - mean) W - (old - mean)||_F, no scale.

    Both sides are centred first: dlib's old-space vectors share a large common component
    that a rotation alone cannot produce; the bias puts it back.
    """
    x = np.asarray(new, dtype=np.float64)
    y = np.asarray(old, dtype=np.float64)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    u, _, vt = np.linalg.svd((x - x_mean).T @ (y - y_mean), full_matrices=False)
    weight = u @ vt
    bias = y_mean - x_mean @ weight
    return weight.astype(np.float32), bias.astype(np.float32)
