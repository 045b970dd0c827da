"""Two-way transformers' search: the forward search re-scored with the fused score.

Kept apart from :mod:`service.pipeline` (the orchestration) so that module stays short.
"""

from __future__ import annotations

import time

import numpy as np

from service.errors import ServiceUnavailable
from service.fusion import RERANK_DEPTH, candidate_scores
from service.pipeline_types import ActiveMapping, MappedFaces, SearchWithVectorsFn


def fused_hits(
    search_with_vectors: SearchWithVectorsFn,
    *,
    mapped: MappedFaces,
    mapping: ActiveMapping,
    top_k: int,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], float, float]:
    """Per query (face ids, fused scores) best first; with the search and re-rank seconds.

    The forward search (old space) over-fetches ``max(4 * top_k, RERANK_DEPTH)`` candidates
    with their stored vectors; the backward map runs once on all of them; each query's
    candidates are re-scored with :func:`service.fusion.candidate_scores` and re-sorted.
    """
    map_gallery = mapping.map_gallery
    if map_gallery is None:
        raise ServiceUnavailable(f"transformer {mapping.version} has no gallery map")
    start = time.perf_counter()
    found = search_with_vectors(mapped.vectors, max(top_k * 4, RERANK_DEPTH))
    search_s = time.perf_counter() - start
    start = time.perf_counter()
    stored = [vectors for _, _, vectors in found]
    gallery_new = (
        map_gallery(np.concatenate(stored, axis=0)) if sum(len(v) for v in stored) else None
    )
    out: list[tuple[np.ndarray, np.ndarray]] = []
    offset = 0
    for i, (ids, _, vectors) in enumerate(found):
        m = len(ids)
        if m == 0 or gallery_new is None:
            out.append((ids, np.zeros(0, np.float32)))
            continue
        scores = candidate_scores(
            query_old=mapped.vectors[i],
            query_new=mapped.queries_new[i],
            candidate_old=vectors,
            candidate_new=gallery_new[offset : offset + m],
            weight=mapping.fusion_weight,
        )
        offset += m
        order = np.argsort(-scores, kind="stable")  # ties keep the forward order
        out.append((ids[order], scores[order]))
    return out, search_s, time.perf_counter() - start
