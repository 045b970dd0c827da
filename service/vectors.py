"""Vector helpers. ``l2_normalize`` is THE normaliser: every side calls it in exactly one place."""

from __future__ import annotations

import numpy as np

# How queries are embedded: the names shared by calibrations (service.decision), evaluation
# reports and the service (FACEBRIDGE_FLIP_AVERAGE_QUERIES).
QUERIES_PLAIN = "plain"
QUERIES_FLIP = "flip-averaged"


def as_float32_matrix(
    x: np.ndarray, *, dim: int | None = None, name: str = "vectors"
) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 [n, d] array (what FAISS and ORT require)."""
    from service.errors import ContractError

    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ContractError(f"{name}: expected a 2-D array, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ContractError(f"{name}: expected dimension {dim}, got {arr.shape[1]}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def l2_normalize(x: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation to float32, C-contiguous. Zero rows stay zero."""
    arr = as_float32_matrix(x)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.ascontiguousarray(arr / np.maximum(norms, eps), dtype=np.float32)


def flip_average(plain: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """THE flip-averaged embedding: normalise(unit(e(x)) + unit(e(mirror(x)))).

    Used by the backbone for queries (``flip_average_queries``) and by evaluation for pairs that
    carry ``new_flip``, so both sides average the same way.
    """
    a, b = as_float32_matrix(plain), as_float32_matrix(flipped)
    if a.shape != b.shape:
        from service.errors import ContractError

        raise ContractError(f"flip_average: shapes differ ({a.shape} vs {b.shape})")
    return l2_normalize(l2_normalize(a) + l2_normalize(b))
