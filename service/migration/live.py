"""The progressive migration inside the service: cross-space ranking and capture per request.

:class:`LiveMigration` is handed to :class:`service.pipeline.Pipeline`. For a one-way
transformer it ranks every request across the spaces the gallery holds (the old space through
the transformer, the backbone's native space) with :mod:`service.migration.search`, and, when
``FACEBRIDGE_CAPTURE=confident`` and the request allows it, keeps the native vector of each
image whose top-1 passes the capture rule. With no native vector in the gallery and capture
off it steps aside (the classic one-space path runs). Two-way transformers keep their own
re-scoring (service.fusion) and capture nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from service.migration.capture import CaptureRule, batch_verdicts
from service.migration.captures import Provenance, store_capture
from service.migration.fusion import FusedCandidate, SpaceHits
from service.migration.search import (
    SpaceCalibrations,
    SpaceQuery,
    capture_verdicts,
    fused_candidates,
    search_spaces,
)
from service.pipeline_types import ActiveMapping, Candidate, GalleryHit, MappedFaces

if TYPE_CHECKING:
    from service.gallery.sync import GallerySync

log = logging.getLogger(__name__)
# face ids -> (their hits, the vectors of each of their identities): one SQL round trip
# (service.gallery.hits.gallery_hits_counted)
CountedLookupFn = Callable[[Sequence[int]], tuple[dict[int, GalleryHit], dict[int, int]]]


class LiveMigration:
    """Cross-space ranking + capture for one process (thread-safe: no per-request state)."""

    def __init__(
        self,
        *,
        gallery: GallerySync,
        session_factory: sessionmaker[Session],
        lookup: CountedLookupFn,
        native_space: str,
        rule: CaptureRule,
        capture: bool,
        on_capture: Callable[[int], None] | None = None,
    ) -> None:
        self.gallery = gallery
        self.session_factory = session_factory
        self.lookup = lookup
        self.native_space = native_space
        self.rule = rule
        self.capture = capture
        self.on_capture = on_capture or (lambda n: None)

    def applies(self, mapping: ActiveMapping) -> bool:
        if mapping.two_way:
            return False
        native = self.gallery.store(self.native_space)
        return self.capture or (native is not None and native.ntotal > 0)

    def candidates(
        self,
        *,
        mapped: MappedFaces,
        mapping: ActiveMapping,
        top_k: int,
        capture: tuple[bool, str | None],
        observe: Callable[[str, float], None],
    ) -> dict[int, list[Candidate]]:
        """:meth:`rank` keyed by upload index, with the search timings recorded
        (``capture``: whether the request allows capture, and its request id)."""
        if not mapped.image_index:
            return {}
        start = time.perf_counter()
        ranked = self.rank(
            mapped=mapped,
            mapping=mapping,
            top_k=top_k,
            capture=capture[0],
            request_id=capture[1],
        )
        seconds = time.perf_counter() - start
        observe("search", seconds)
        for i in mapped.image_index:
            mapped.timings[i].search = seconds / len(mapped.image_index)
        return dict(zip(mapped.image_index, ranked, strict=True))

    def rank(
        self,
        *,
        mapped: MappedFaces,
        mapping: ActiveMapping,
        top_k: int,
        capture: bool,
        request_id: str | None,
    ) -> list[list[Candidate]]:
        """Candidates per row of ``mapped.vectors``; captures when asked and allowed."""
        hits: dict[int, GalleryHit] = {}
        vectors: dict[int, int] = {}

        def identity_of(face_ids: np.ndarray) -> np.ndarray:  # once a request (search_spaces)
            wanted = face_ids.tolist()
            found, counts = self.lookup([i for i in wanted if i >= 0])
            hits.update(found)
            vectors.update(counts)
            return np.asarray(
                [h.identity_id if (h := hits.get(i)) else -1 for i in wanted], np.int64
            )

        stores = dict(self.gallery.stores)
        query = SpaceQuery(mapped=mapped.vectors, native={self.native_space: mapped.queries_new})
        per_query = search_spaces(
            query,
            old_space=self.gallery.primary_space,
            stores=stores,
            identity_of=identity_of,
            top_k=top_k,
        )
        calibrations = SpaceCalibrations(
            mapped=mapping.calibration, native={self.native_space: mapping.native_calibration}
        )
        fused = fused_candidates(
            per_query,
            calibrations=calibrations,
            old_space=self.gallery.primary_space,
            top_k=max(top_k, 2),
            vectors_of=lambda identities: {i: vectors[i] for i in identities if i in vectors},
        )
        if capture and self.capture:
            faces = sum(s.ntotal for s in stores.values())
            self._capture(per_query, fused, mapped, faces=faces, request_id=request_id)
        return [[_candidate(c, hits) for c in found[:top_k]] for found in fused]

    def _capture(
        self,
        per_query: Sequence[Sequence[SpaceHits]],
        fused: Sequence[Sequence[FusedCandidate]],
        mapped: MappedFaces,
        *,
        faces: int,
        request_id: str | None,
    ) -> None:
        verdicts = batch_verdicts(
            capture_verdicts(per_query, fused, rule=self.rule, gallery_faces=faces)
        )
        stored = 0
        for row, verdict in enumerate(verdicts):
            if not verdict.capture or verdict.identity_id is None:
                continue
            provenance = Provenance(
                request_id=request_id,
                score=fused[row][0].score,
                margin=verdict.margin_decades,
                transformer_version=mapped.transformer,
            )
            with self.session_factory() as session:
                result = store_capture(
                    session,
                    identity_id=verdict.identity_id,
                    vector=mapped.queries_new[row],
                    space=self.native_space,
                    provenance=provenance,
                    max_native=self.rule.max_native,
                )
            stored += int(result.stored)
        if stored:
            self.gallery.refresh()  # this process's stores see them at once
            self.on_capture(stored)


def _candidate(c: FusedCandidate, hits: dict[int, GalleryHit]) -> Candidate:
    hit = hits.get(c.face_id)
    return Candidate(
        identity_id=c.identity_id,
        external_id=None if hit is None else hit.external_id,
        name=None if hit is None else hit.name,
        score=float(c.score),
        face_id=c.face_id,
        spaces=tuple(sorted(c.spaces)),
    )
