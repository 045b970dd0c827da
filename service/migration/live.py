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
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Face
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
LookupFn = Callable[[Sequence[int]], dict[int, GalleryHit]]


class VectorCounts:
    """Vectors per identity in all spaces (an SQL count), cached while the gallery's revision
    stays (:attr:`service.gallery.sync.GallerySync.revision`: any change to a store, from the
    change log or written here, starts a new cache), so a request asks SQL only about the
    identities it is the first to meet since the last change. Thread-safe."""

    MAX_ENTRIES = 100_000  # then it starts again (a bound, not an LRU: the counts are cheap)

    def __init__(self, *, session_factory: sessionmaker[Session], gallery: GallerySync) -> None:
        self.session_factory = session_factory
        self.gallery = gallery
        self._lock = threading.Lock()
        self._revision: object = None
        self._counts: dict[int, int] = {}  # 0: no face in SQL

    def __call__(self, identities: set[int]) -> dict[int, int]:
        """identity -> its vectors, for those of ``identities`` that have any."""
        revision = self.gallery.revision
        with self._lock:
            if revision != self._revision or len(self._counts) > self.MAX_ENTRIES:
                self._counts, self._revision = {}, revision
            counts = self._counts
            missing = sorted(i for i in identities if i not in counts)
        if missing:
            with self.session_factory() as session:
                rows = session.execute(
                    select(Face.identity_id, func.count())
                    .where(Face.identity_id.in_(missing))
                    .group_by(Face.identity_id)
                ).all()
            found = {int(i): int(n) for i, n in rows}
            with self._lock:
                counts.update((i, found.get(i, 0)) for i in missing)
        return {i: n for i in identities if (n := counts[i])}


class LiveMigration:
    """Cross-space ranking + capture for one process (thread-safe: no per-request state)."""

    def __init__(
        self,
        *,
        gallery: GallerySync,
        session_factory: sessionmaker[Session],
        native_space: str,
        rule: CaptureRule,
        capture: bool,
        on_capture: Callable[[int], None] | None = None,
    ) -> None:
        self.gallery = gallery
        self.session_factory = session_factory
        self.native_space = native_space
        self.rule = rule
        self.capture = capture
        self.on_capture = on_capture or (lambda n: None)
        self._vector_counts = VectorCounts(session_factory=session_factory, gallery=gallery)

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
        lookup: LookupFn,
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
            lookup=lookup,
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
        lookup: LookupFn,
        capture: bool,
        request_id: str | None,
    ) -> list[list[Candidate]]:
        """Candidates per row of ``mapped.vectors``; captures when asked and allowed."""
        hits: dict[int, GalleryHit] = {}

        def identity_of(face_ids: np.ndarray) -> np.ndarray:  # once a request (search_spaces)
            wanted = face_ids.tolist()
            missing = [i for i in wanted if i >= 0 and i not in hits]
            if missing:
                hits.update(lookup(missing))
            found = [hits.get(i) for i in wanted]
            return np.asarray([-1 if h is None else h.identity_id for h in found], np.int64)

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
            vectors_of=self._vector_counts,
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
