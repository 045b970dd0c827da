"""Pure, batched evaluation metrics (NumPy only; no FAISS, no torch).

Every function here has a loop-based reference implementation in
``tests/training/evaluation/test_eval_metrics.py``. Percentages are in [0, 100].

Conventions
-----------
- Search results are ``ranked_ids`` [n_probes, k]: gallery row positions, best first, with
  ``-1`` for empty slots (FAISS returns those when k > gallery size). An empty slot never counts
  as a hit.
- Ties in identification are resolved by the search that produced ``ranked_ids`` (FAISS keeps
  the lower id first); these functions only read the ranking.
- Verification (:func:`tar_at_far`): a pair is ACCEPTED when ``score > threshold`` (strictly).
  The threshold is the lowest impostor score at which the false-accept rate is <= ``far``:
  with impostors sorted descending and ``a`` = the largest count with ``a / n_impostors <= far``,
  the threshold is the ``(a + 1)``-th highest impostor score. Impostors tied with it are
  rejected, so the realised FAR never exceeds ``far``; genuine scores tied with it are rejected
  too (a conservative TAR). When every impostor may be accepted the threshold is ``-inf``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.errors import InvalidInput


def top_k_hits(
    *,
    ranked_ids: np.ndarray,
    gallery_labels: np.ndarray,
    probe_labels: np.ndarray,
    k: int,
) -> np.ndarray:
    """Per probe [n_probes] bool: its identity appears among its first ``k`` results."""
    ranked = np.asarray(ranked_ids)
    probes = np.asarray(probe_labels)
    gallery = np.asarray(gallery_labels)
    if ranked.ndim != 2 or ranked.shape[0] != probes.shape[0]:
        raise InvalidInput(
            f"ranked_ids must be [n_probes={probes.shape[0]}, k], got shape {ranked.shape}"
        )
    if k < 1:
        raise InvalidInput(f"k must be >= 1, got {k}")
    if probes.shape[0] == 0:
        raise InvalidInput("no probes to score")
    head = ranked[:, :k]
    valid = head >= 0
    labels = gallery[np.where(valid, head, 0)]
    return (valid & (labels == probes[:, None])).any(axis=1)


def top_k_accuracy(
    *,
    ranked_ids: np.ndarray,
    gallery_labels: np.ndarray,
    probe_labels: np.ndarray,
    k: int,
) -> float:
    """Percent of probes whose identity appears among their first ``k`` results."""
    hits = top_k_hits(
        ranked_ids=ranked_ids, gallery_labels=gallery_labels, probe_labels=probe_labels, k=k
    )
    return float(100.0 * hits.mean())


@dataclass(frozen=True)
class PairedComparison:
    """Two systems scored on the SAME probes: how many only ``a`` / only ``b`` got right, and the
    two-sided exact McNemar p-value (binomial test of the discordant probes, p = 1/2)."""

    only_a: int
    only_b: int
    p_value: float


def mcnemar_exact(*, hits_a: np.ndarray, hits_b: np.ndarray) -> PairedComparison:
    """Exact McNemar test: is ``a``'s per-probe hit rate different from ``b``'s?

    Only discordant probes count: with ``n = only_a + only_b`` and ``m = min(only_a, only_b)``,
    ``p = min(1, 2 * P(X <= m))`` for ``X ~ Binomial(n, 1/2)``; ``p = 1`` when ``n = 0``.
    """
    a, b = np.asarray(hits_a, dtype=bool).ravel(), np.asarray(hits_b, dtype=bool).ravel()
    if a.shape != b.shape:
        raise InvalidInput(f"hits must be paired per probe, got {a.shape} vs {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, m = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return PairedComparison(only_a=0, only_b=0, p_value=1.0)
    # log-space binomial terms: n can be thousands (2**n overflows a float)
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2.0)
        for k in range(m + 1)
    ]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return PairedComparison(only_a=only_a, only_b=only_b, p_value=min(1.0, 2.0 * tail))


def accepted_count_at_far(n_impostors: int, far: float) -> int:
    """The largest number ``a`` of accepted impostors with ``a / n_impostors <= far``."""
    if not 0.0 <= far <= 1.0:
        raise InvalidInput(f"far must lie in [0, 1], got {far}")
    if n_impostors <= 0:
        raise InvalidInput("no impostor scores: cannot choose a threshold")
    a = min(int(np.floor(far * n_impostors)), n_impostors)
    # floor(far * n) can be off by one in floating point; settle it with the defining inequality.
    while a + 1 <= n_impostors and (a + 1) / n_impostors <= far:
        a += 1
    while a > 0 and a / n_impostors > far:
        a -= 1
    return a


@dataclass(frozen=True)
class VerificationResult:
    """TAR (percent) at the threshold chosen on impostors, and the realised FAR (fraction)."""

    tar: float
    threshold: float
    far_target: float
    far_realised: float
    n_genuine: int
    n_impostor: int


def tar_at_far(*, genuine: np.ndarray, impostor: np.ndarray, far: float) -> VerificationResult:
    """True-accept rate at a false-accept rate ``far`` (threshold rule: module docstring)."""
    gen = np.asarray(genuine, dtype=np.float64).ravel()
    imp = np.asarray(impostor, dtype=np.float64).ravel()
    if gen.size == 0:
        raise InvalidInput("no genuine scores: cannot compute a TAR")
    allowed = accepted_count_at_far(imp.size, far)
    if allowed >= imp.size:
        threshold = -np.inf
    else:
        # The (allowed+1)-th highest impostor score: partition instead of a full sort.
        position = imp.size - 1 - allowed
        threshold = float(np.partition(imp, position)[position])
    tar = float(100.0 * np.mean(gen > threshold))
    return VerificationResult(
        tar=tar,
        threshold=float(threshold),
        far_target=float(far),
        far_realised=float(np.mean(imp > threshold)),
        n_genuine=int(gen.size),
        n_impostor=int(imp.size),
    )


def genuine_impostor_scores(
    *, scores: np.ndarray, probe_labels: np.ndarray, template_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Split a probe x template score matrix into genuine (same identity) and impostor scores."""
    matrix = np.asarray(scores)
    probes, templates = np.asarray(probe_labels), np.asarray(template_labels)
    if matrix.shape != (probes.shape[0], templates.shape[0]):
        raise InvalidInput(
            f"scores must be [{probes.shape[0]}, {templates.shape[0]}], got {matrix.shape}"
        )
    same = probes[:, None] == templates[None, :]
    return matrix[same], matrix[~same]


def compatibility(*, mapped_top1: float, old_top1: float) -> bool:
    """The compatibility criterion: mapped top-1 strictly above old/old top-1."""
    return bool(mapped_top1 > old_top1)


def gap_closed(*, mapped: float, old: float, new: float) -> float | None:
    """(mapped - old) / (new - old); None when new == old (no gap to close)."""
    gap = new - old
    if gap == 0:
        return None
    return float((mapped - old) / gap)
