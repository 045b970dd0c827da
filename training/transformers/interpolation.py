"""Synthetic training pairs by interpolating (averaging) two identities' embeddings.

A synthetic row is ``((new_a + new_b) / 2, (old_a + old_b) / 2)`` for one image ``a`` of identity
A and one image ``b`` of identity B, labelled with a fresh synthetic identity (A, B). The study
found this helps only sparingly: ~25% of the data, sorted pairing, as a pre-training stage.

Pairing methods:
- ``linear``: the study's naive rule: identities in label order, 1st with 2nd, 3rd with 4th, ...;
  image i of A with image i of B.
- ``sorted``: identities sorted by image count (most first), paired with their neighbour in that
  order; each synthetic identity gets 20-30 samples drawn from the A x B image combinations.
- ``proximity``: identities with >= 2 images paired greedily by the cosine of their old-space class
  means (nearest first, the study's proposed next step); 20-30 samples each, data-richest first.

``rate`` = synthetic rows / real rows, in [0, 0.5]. Output vectors are midpoints of unit vectors
(not renormalised: the single normalisation per side happens at load).
"""

from __future__ import annotations

import numpy as np

from service.errors import InvalidInput
from service.vectors import l2_normalize
from training.transformers.data import TrainingPairs

INTERPOLATION_METHODS = ("none", "linear", "sorted", "proximity")
MAX_RATE = 0.5
SAMPLES_PER_LABEL = (20, 30)


def _rows_by_label(label: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(label, kind="stable")
    uniq, starts = np.unique(label[order], return_index=True)
    return {int(u): rows for u, rows in zip(uniq, np.split(order, starts[1:]), strict=True)}


def linear_pairs(label: np.ndarray) -> list[tuple[int, int]]:
    """Study's rule: identities in label order, (1st, 2nd), (3rd, 4th), ..."""
    ids = np.unique(label)
    return [(int(ids[i]), int(ids[i + 1])) for i in range(0, ids.size - 1, 2)]


def sorted_pairs(label: np.ndarray) -> list[tuple[int, int]]:
    """Identities by image count (most first, ties by label), paired with their neighbour."""
    ids, counts = np.unique(label, return_counts=True)
    order = np.lexsort((ids, -counts))
    ids = ids[order]
    return [(int(ids[i]), int(ids[i + 1])) for i in range(0, ids.size - 1, 2)]


def proximity_pairs(label: np.ndarray, old: np.ndarray) -> list[tuple[int, int]]:
    """Identities with >= 2 images, greedily paired with the nearest free one (cosine of their
    old-space class means); returned data-richest pair first."""
    by_label = _rows_by_label(label)
    ids = np.array([k for k, rows in by_label.items() if rows.size >= 2], dtype=np.int64)
    if ids.size < 2:
        return []
    means = l2_normalize(np.stack([old[by_label[int(i)]].mean(axis=0) for i in ids]))
    sims = means @ means.T
    np.fill_diagonal(sims, -np.inf)
    iu, ju = np.triu_indices(ids.size, k=1)
    order = np.argsort(-sims[iu, ju], kind="stable")
    used = np.zeros(ids.size, dtype=bool)
    pairs: list[tuple[int, int]] = []
    for k in order:
        i, j = iu[k], ju[k]
        if not used[i] and not used[j]:
            used[i] = used[j] = True
            pairs.append((int(ids[i]), int(ids[j])))
    combos = [by_label[a].size * by_label[b].size for a, b in pairs]
    return [pairs[k] for k in np.argsort(-np.asarray(combos), kind="stable")]


def make_synthetic(
    pairs: TrainingPairs,
    *,
    method: str,
    rate: float,
    seed: int = 0,
    samples_per_label: tuple[int, int] = SAMPLES_PER_LABEL,
) -> TrainingPairs:
    """About ``rate * len(pairs)`` synthetic rows (fewer only when the pairing runs out)."""
    if method not in INTERPOLATION_METHODS:
        raise InvalidInput(f"unknown interpolation {method!r}; one of {INTERPOLATION_METHODS}")
    if not 0.0 <= rate <= MAX_RATE:
        raise InvalidInput(f"interpolation rate must be in [0, {MAX_RATE}], got {rate}")
    target = round(rate * len(pairs))
    empty = TrainingPairs(
        new=np.zeros((0, pairs.new_dim), np.float32),
        old=np.zeros((0, pairs.old_dim), np.float32),
        label=np.zeros(0, np.int64),
    )
    if method == "none" or target == 0:
        return empty
    rng = np.random.default_rng(seed)
    by_label = _rows_by_label(pairs.label)
    if method == "linear":
        id_pairs = linear_pairs(pairs.label)
    elif method == "sorted":
        id_pairs = sorted_pairs(pairs.label)
    else:
        id_pairs = proximity_pairs(pairs.label, pairs.old)

    rows_a: list[np.ndarray] = []
    rows_b: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    next_label = int(pairs.label.max()) + 1
    made = 0
    for a, b in id_pairs:
        if made >= target:
            break
        ra, rb = by_label[a], by_label[b]
        if method == "linear":
            n = min(ra.size, rb.size, target - made)
            pick_a, pick_b = ra[:n], rb[:n]
        else:
            # Every synthetic identity gets 20-30 samples, the last one too (may overshoot a bit).
            lo, hi = samples_per_label
            n = min(int(rng.integers(lo, hi + 1)), max(target - made, lo))
            combos = ra.size * rb.size
            flat = rng.choice(combos, size=n, replace=combos < n)
            pick_a, pick_b = ra[flat // rb.size], rb[flat % rb.size]
        rows_a.append(pick_a)
        rows_b.append(pick_b)
        labels.append(np.full(n, next_label, dtype=np.int64))
        next_label += 1
        made += n
    if not labels:
        return empty
    ia, ib = np.concatenate(rows_a), np.concatenate(rows_b)
    return TrainingPairs(
        new=((pairs.new[ia] + pairs.new[ib]) * 0.5).astype(np.float32),
        old=((pairs.old[ia] + pairs.old[ib]) * 0.5).astype(np.float32),
        label=np.concatenate(labels),
    )
