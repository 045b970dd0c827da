"""Open-set calibration of a transformer's score, measured on its fit rows (torch-free).

The impostor scores are the ones the service will compute: every fit row as a query (mapped
exactly as the service maps it: flip-averaged when the pairs carry ``new_flip``, two-way fused
when the transformer is two-way; :func:`service.evaluation.protocol.mapped_vectors`) against
one gallery vector per OTHER identity (the protocol's enrolment template: the image whose
``path`` sorts first), i.e. one comparison per (query, other person). On the kit's 3,811 bridge
rows x 1,430 identities that is 5.4 million impostors: FAR resolved to ~1e-5 by the knots and
below by the fitted tail (:func:`service.decision.fit_calibration`). Larger sets are subsampled
to ``max_comparisons`` (seeded query rows).
"""

from __future__ import annotations

import numpy as np

from service.contracts import PairsSet
from service.decision import SCORE_FORWARD, SCORE_FUSED, ScoreCalibration, fit_calibration
from service.errors import InvalidInput
from service.evaluation.protocol import MappedRows, build_gallery_and_probes, mapped_vectors
from service.vectors import l2_normalize

MAX_COMPARISONS = 20_000_000
CHUNK_ROWS = 1024


def impostor_scores(
    pairs: PairsSet,
    mapped: MappedRows,
    *,
    max_comparisons: int = MAX_COMPARISONS,
    seed: int = 0,
    query_rows: np.ndarray | None = None,
) -> tuple[np.ndarray, int, int]:
    """(impostor scores float32, queries used, gallery size) for the service's score:
    ``query_rows`` (default every row) against one template per identity of ``pairs``."""
    split = build_gallery_and_probes(pairs)
    gallery_rows = np.sort(split.gallery_rows)  # one row per identity
    labels = np.asarray(pairs.label)
    if gallery_rows.size < 2:
        raise InvalidInput("calibration needs at least 2 identities")
    query_rows = np.arange(len(pairs)) if query_rows is None else np.asarray(query_rows)
    if query_rows.size * gallery_rows.size > max_comparisons:
        keep = max(max_comparisons // gallery_rows.size, 1)
        rng = np.random.default_rng(seed)
        query_rows = np.sort(rng.choice(query_rows, size=keep, replace=False))
    queries, gallery = mapped_vectors(
        mapped,
        query_rows=query_rows,
        gallery_rows=gallery_rows,
        old_gallery=l2_normalize(pairs.old[gallery_rows]),
    )
    gallery_labels = labels[gallery_rows]
    parts: list[np.ndarray] = []
    for start in range(0, query_rows.size, CHUNK_ROWS):
        rows = query_rows[start : start + CHUNK_ROWS]
        scores = queries[start : start + CHUNK_ROWS] @ gallery.T
        parts.append(scores[labels[rows][:, None] != gallery_labels[None, :]])
    return np.concatenate(parts).astype(np.float32), int(query_rows.size), int(gallery_rows.size)


def calibrate(
    pairs: PairsSet,
    mapped: MappedRows,
    *,
    space: str,
    source: str = "fit rows",
    max_comparisons: int = MAX_COMPARISONS,
    seed: int = 0,
) -> ScoreCalibration:
    """The :class:`ScoreCalibration` of ``mapped``'s score on ``pairs`` (see module docstring).

    ``space`` names the gallery side's model (the transformer's target model id)."""
    scores, n_queries, n_gallery = impostor_scores(
        pairs, mapped, max_comparisons=max_comparisons, seed=seed
    )
    return fit_calibration(
        scores,
        score_kind=SCORE_FORWARD if mapped.fusion_weight == 1.0 else SCORE_FUSED,
        space=space,
        queries=mapped.query_kind,
        fusion_weight=mapped.fusion_weight,
        n_queries=n_queries,
        n_gallery=n_gallery,
        source=f"{source}: {n_queries} queries x {n_gallery} identities",
    )
