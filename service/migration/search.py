"""One identify across spaces: search each reachable space, fuse per identity, judge capture.

Shared by the service's pipeline and by ``facebridge migration simulate`` so the simulation
runs exactly the service's search, fusion and capture code. Stores are the gallery's vector
stores (:class:`service.gallery.engines.base.VectorStore`); ``identity_of`` turns face ids into
identity ids (-1: unknown) the way the caller knows them (SQL in the service, an array in the
simulation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service.decision import SCORE_NATIVE, ScoreCalibration, pick_calibration
from service.gallery.engines.base import VectorStore
from service.migration.capture import CaptureRule, CaptureVerdict, judge
from service.migration.fusion import KIND_MAPPED, KIND_NATIVE, FusedCandidate, SpaceHits, fuse

IdentityOf = Callable[[np.ndarray], np.ndarray]
SEARCH_DEPTH = 4  # faces fetched per identity wanted (several faces of one identity)
_NO_IDS = np.zeros(0, np.int64)


@dataclass(frozen=True)
class SpaceCalibrations:
    """The calibration of each space's score for one transformer (None: fallback)."""

    mapped: ScoreCalibration | None
    native: dict[str, ScoreCalibration | None]

    @classmethod
    def from_transformer(
        cls,
        calibrations: Sequence[ScoreCalibration],
        *,
        mapped: ScoreCalibration | None,
        native_space: str,
        queries: str | None,
    ) -> SpaceCalibrations:
        native = pick_calibration(calibrations, score_kind=SCORE_NATIVE, queries=queries)
        return cls(mapped=mapped, native={native_space: native})


@dataclass(frozen=True)
class SpaceQuery:
    """The query batch: old-space (mapped) vectors and native vectors per native space."""

    mapped: np.ndarray  # [n, d_old]
    native: Mapping[str, np.ndarray]  # space -> [n, d_space]


def search_spaces(
    query: SpaceQuery,
    *,
    old_space: str,
    stores: Mapping[str, VectorStore],
    identity_of: IdentityOf,
    top_k: int,
) -> list[list[SpaceHits]]:
    """Per query: its hits in every space that has a store and faces. One search per space for
    the whole batch, then ONE ``identity_of`` call for every hit of every space and query (an
    SQL round trip in the service, not one per space and query)."""
    n = int(query.mapped.shape[0])
    looks = [(old_space, KIND_MAPPED, query.mapped)]
    looks += [(space, KIND_NATIVE, vectors) for space, vectors in query.native.items()]
    found = []
    for space, kind, vectors in looks:
        store = stores.get(space)
        if store is None or store.ntotal == 0 or vectors.shape[0] == 0:
            continue
        found.append((space, kind, store.search(vectors, k=top_k * SEARCH_DEPTH)))
    face_ids = [np.asarray(hits.ids, np.int64) for _, _, per_query in found for hits in per_query]
    every = np.concatenate(face_ids) if face_ids else _NO_IDS
    identities = np.asarray(identity_of(every) if every.size else _NO_IDS, np.int64)
    out: list[list[SpaceHits]] = [[] for _ in range(n)]
    ids, start = iter(face_ids), 0
    for space, kind, per_query in found:
        for i, hits in enumerate(per_query):
            mine = next(ids)
            end = start + mine.size
            scores = np.asarray(hits.scores)
            out[i].append(SpaceHits(space, kind, mine, scores, identities[start:end]))
            start = end
    return out


def fused_candidates(
    per_query: Sequence[Sequence[SpaceHits]],
    *,
    calibrations: SpaceCalibrations,
    old_space: str,
    top_k: int,
    vectors_of: Callable[[set[int]], Mapping[int, int]] | None = None,
) -> list[list[FusedCandidate]]:
    """Fused candidates per query; ``vectors_of(identities)``: their vector counts."""
    spaces: dict[str, ScoreCalibration | None] = {old_space: calibrations.mapped}
    spaces.update(calibrations.native)
    # One count lookup for the whole batch (an SQL round trip in the service), not one a query.
    wanted = {i for hits in per_query for h in hits for i in h.identities.tolist() if i >= 0}
    counts = vectors_of(wanted) if vectors_of is not None and wanted else None
    return [
        fuse(
            hits, calibrations=spaces, reference=calibrations.mapped, top_k=top_k, vectors_of=counts
        )
        for hits in per_query
    ]


def capture_verdicts(
    per_query: Sequence[Sequence[SpaceHits]],
    candidates: Sequence[Sequence[FusedCandidate]],
    *,
    rule: CaptureRule,
    gallery_faces: int,
) -> list[CaptureVerdict]:
    """Rules 1-3 per query (service.migration.capture); the caller applies the batch rule."""
    return [
        judge(c, h, rule=rule, gallery_faces=gallery_faces)
        for h, c in zip(per_query, candidates, strict=True)
    ]
