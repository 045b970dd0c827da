"""The next upgrade: transformers keyed by (source space, target space), chained.

When a third model arrives the gallery already holds old-space vectors (legacy + mapped) and
model-2 native vectors (enrolled or captured). A model-3 query must reach both: it is searched
natively in its own space (once model-3 vectors exist), through a (model 3 -> model 2)
transformer in model 2's space, and through (model 3 -> old) in the old space, or, when there
is no direct key, through the shortest chain of keyed transformers (model 3 -> model 2 ->
old), each hop's output L2-normalised by its runner. The per-space evidence is then fused per
identity exactly as for two spaces (:mod:`service.migration.fusion`), each space's score
turned into log-FAR by the calibration of the LAST hop that reached it (the native one for
the query's own space); a space reached through a chain of several hops uses the last hop's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service.decision import ScoreCalibration
from service.errors import InvalidInput
from service.gallery.engines.base import VectorStore
from service.migration.fusion import KIND_MAPPED, KIND_NATIVE, FusedCandidate, SpaceHits, fuse
from service.migration.search import SEARCH_DEPTH, IdentityOf


@dataclass(frozen=True)
class SpaceMap:
    """One transformer: ``source`` space -> ``target`` space (unit vectors out)."""

    source: str
    target: str
    map: Callable[[np.ndarray], np.ndarray]
    calibration: ScoreCalibration | None = None  # of scores in ``target`` after this map


class TransformerChain:
    """Keyed transformers and the routes between spaces (shortest chain of hops)."""

    def __init__(self, maps: Iterable[SpaceMap]) -> None:
        self.by_key: dict[tuple[str, str], SpaceMap] = {}
        for m in maps:
            if (m.source, m.target) in self.by_key:
                raise InvalidInput(f"two transformers for {m.source} -> {m.target}")
            self.by_key[(m.source, m.target)] = m

    def route(self, source: str, target: str) -> list[SpaceMap] | None:
        """The hops from ``source`` to ``target`` (empty: the same space; None: unreachable)."""
        if source == target:
            return []
        seen, queue = {source}, deque([(source, list[SpaceMap]())])
        while queue:
            space, hops = queue.popleft()
            for (src, dst), m in sorted(self.by_key.items()):
                if src == space and dst not in seen:
                    if dst == target:
                        return [*hops, m]
                    seen.add(dst)
                    queue.append((dst, [*hops, m]))
        return None

    def queries(
        self, vectors: np.ndarray, *, source: str, spaces: Iterable[str]
    ) -> dict[str, tuple[np.ndarray, ScoreCalibration | None, int]]:
        """space -> (query vectors there, the last hop's calibration, hops) for every space of
        ``spaces`` that ``source`` reaches."""
        out: dict[str, tuple[np.ndarray, ScoreCalibration | None, int]] = {}
        for space in spaces:
            hops = self.route(source, space)
            if hops is None:
                continue
            q = vectors
            for m in hops:
                q = m.map(q)
            out[space] = (q, hops[-1].calibration if hops else None, len(hops))
        return out


def identify_across(
    vectors: np.ndarray,
    *,
    source: str,
    chain: TransformerChain,
    stores: Mapping[str, VectorStore],
    identity_of: IdentityOf,
    native_calibrations: Mapping[str, ScoreCalibration | None],
    reference: ScoreCalibration | None,
    top_k: int,
) -> list[list[FusedCandidate]]:
    """Fused candidates per query of a ``source``-space batch, over every reachable space."""
    reached = chain.queries(vectors, source=source, spaces=stores)
    per_query: list[list[SpaceHits]] = [[] for _ in range(vectors.shape[0])]
    calibrations: dict[str, ScoreCalibration | None] = {}
    for space, (q, calibration, hops) in reached.items():
        store = stores[space]
        if store.ntotal == 0:
            continue
        kind = KIND_NATIVE if hops == 0 else KIND_MAPPED
        calibrations[space] = native_calibrations.get(space) if hops == 0 else calibration
        for i, hits in enumerate(store.search(q, k=top_k * SEARCH_DEPTH)):
            ids = np.asarray(hits.ids, np.int64)
            found = identity_of(ids) if ids.size else np.zeros(0, np.int64)
            per_query[i].append(SpaceHits(space, kind, ids, np.asarray(hits.scores), found))
    return [_fuse(h, calibrations, reference, top_k) for h in per_query]


def _fuse(
    hits: Sequence[SpaceHits],
    calibrations: Mapping[str, ScoreCalibration | None],
    reference: ScoreCalibration | None,
    top_k: int,
) -> list[FusedCandidate]:
    return fuse(hits, calibrations=calibrations, reference=reference, top_k=top_k)
