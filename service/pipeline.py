"""Identify / verify / enrol orchestration: bytes in, old-space vectors and candidates out.

decode (size + pixel limits) -> aligned faces (shared pipeline: 112 x 112 crops pass through
the face check, else detect + align) -> backbone (one call per request; L2-normalised there;
optionally flip-averaged: each crop and its mirror image in the same call) -> the active
transformer, read ONCE per request as an immutable snapshot (normalised there) -> FAISS
inner-product search -> for a two-way transformer, re-scoring of the search's candidates with
the fused score (:mod:`service.fusion`) -> identities from SQL -> the open-set decision
(:mod:`service.decision`: the calibrated threshold for the target FPIR at the live gallery
size).

In a batch every image gets its own result: an image that fails (no face, unreadable) carries
its error and the others are answered (the route turns a one-image failure into a problem).

Everything here is blocking (Pillow, ORT, FAISS, SQL) and runs in the app's bounded thread pool,
never on the event loop. The storage side is reached through small callables (wired in
``service.pipeline_wiring``); the image stages are :mod:`service.pipeline_images`. Micro-batching
concurrent requests is the backbone's (:mod:`service.inference.micro_batch`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from service.decision import Decision, GalleryCount, decide_identify, decide_verify
from service.errors import ServiceUnavailable
from service.fusion import fused_scores
from service.fusion_search import fused_hits
from service.gallery.hits import top_identities
from service.inference.detect import FaceDetector
from service.inference.facecheck import CropFaceCheck
from service.migration.live import LiveMigration
from service.pipeline_images import ImageStages
from service.pipeline_types import (
    ActiveMapping,
    AfterIdentifyFn,
    Backbone,
    Candidate,
    GalleryHit,
    IdentifyOutcome,
    IdentifyReply,
    ImageUpload,
    LookupFn,
    MappedFaces,
    SearchFn,
    SearchWithVectorsFn,
    SnapshotFn,
    StageTimes,
    TransformerRunner,
)

__all__ = [
    "ActiveMapping",
    "Backbone",
    "Candidate",
    "GalleryHit",
    "IdentifyOutcome",
    "IdentifyReply",
    "ImageUpload",
    "MappedFaces",
    "Pipeline",
    "StageTimes",
    "TransformerRunner",
]

T = TypeVar("T")
log = logging.getLogger(__name__)


class Pipeline(ImageStages):
    """Blocking request orchestration. Thread-safe: call it from the worker threads."""

    def __init__(
        self,
        *,
        backbone: Backbone,
        detector: FaceDetector | None,
        snapshot: SnapshotFn,
        search: SearchFn,
        search_with_vectors: SearchWithVectorsFn,
        lookup: LookupFn,
        max_image_bytes: int,
        max_image_pixels: int,
        default_threshold: float,
        max_request_pixels: int | None = None,
        detect_max_side: int | None = None,
        flip_average_queries: bool = False,
        observe: Callable[[str, float], None] | None = None,
        face_check: CropFaceCheck | None = None,
        gallery_count: Callable[[], GalleryCount] | None = None,
        target_fpir: float = 0.01,
        verify_far: float = 1e-3,
        after_identify: AfterIdentifyFn | None = None,
        migration: LiveMigration | None = None,
    ) -> None:
        super().__init__(
            detector=detector,
            max_image_bytes=max_image_bytes,
            max_image_pixels=max_image_pixels,
            max_request_pixels=max_request_pixels,
            detect_max_side=detect_max_side,
            face_check=face_check,
            observe=observe,
        )
        self.backbone = backbone
        self.snapshot = snapshot
        self.search = search
        self.search_with_vectors = search_with_vectors
        self.flip_average_queries = bool(flip_average_queries)
        self.lookup = lookup
        self.default_threshold = float(default_threshold)
        self.gallery_count = gallery_count or (lambda: GalleryCount(identities=0, faces=0))
        self.target_fpir = float(target_fpir)
        self.verify_far = float(verify_far)
        self.after_identify = after_identify
        self.migration = migration  # cross-space ranking + capture (service.migration.live)

    # -- shared stages -------------------------------------------------------------------------
    def active_mapping(self) -> ActiveMapping:
        mapping = self.snapshot()
        if mapping is None:
            raise ServiceUnavailable(
                "no active transformer: upload one and activate it "
                "(POST /v1/admin/transformers, then .../{version}/activate)"
            )
        return mapping

    def map_images(
        self,
        *,
        images: Sequence[ImageUpload],
        mapping: ActiveMapping | None = None,
        per_image: bool = False,
    ) -> MappedFaces:
        """Old-space vectors for each usable image (one face each), using ONE transformer
        snapshot. ``per_image``: failing images are reported in ``errors`` instead of raising."""
        mapping = mapping or self.active_mapping()
        crops, times, ok, errors = self._crops(images, per_image=per_image)
        n = max(len(ok), 1)
        start = time.perf_counter()
        if not ok:
            new = np.zeros((0, 0), np.float32)
        elif self.flip_average_queries:
            new = self.backbone.embed(crops, flip_average=True)
        else:
            new = self.backbone.embed(crops)
        embed_s = time.perf_counter() - start
        start = time.perf_counter()
        old = mapping.map(new) if ok else np.zeros((0, 0), np.float32)
        map_s = time.perf_counter() - start
        self._observe("embed", embed_s)
        self._observe("map", map_s)
        for i in ok:
            times[i].embed, times[i].map = embed_s / n, map_s / n
        return MappedFaces(
            vectors=old,
            queries_new=new,
            backbone=self.backbone.model_id,
            transformer=mapping.version,
            threshold=mapping.threshold,
            timings=times,
            image_index=ok,
            errors=errors,
        )

    # -- operations ----------------------------------------------------------------------------
    def identify(
        self,
        *,
        images: Sequence[ImageUpload],
        top_k: int,
        threshold: float | None,
        capture: bool = True,
        request_id: str | None = None,
    ) -> tuple[list[IdentifyOutcome], Decision]:
        """One outcome per image, in upload order (a failed image carries its ``error``), and
        the decision rule that set ``match`` (:func:`service.decision.decide_identify`).
        ``capture`` False: this request never adds captured vectors (service.migration)."""
        mapping = self.active_mapping()
        mapped = self.map_images(images=images, mapping=mapping, per_image=True)
        outcomes, decision = self.rank(
            mapped=mapped,
            mapping=mapping,
            top_k=top_k,
            threshold=threshold,
            filenames=[image.filename for image in images],
            capture=(capture, request_id),
        )
        if self.after_identify is not None and mapped.image_index:
            reply = IdentifyReply(
                queries_new=mapped.queries_new,
                outcomes=[outcomes[i] for i in mapped.image_index],  # rows of queries_new
                top_k=top_k,
                threshold=threshold,
                transformer=mapping.version,
            )
            try:
                self.after_identify(reply)
            except Exception:  # an observer never changes a reply
                log.exception("after_identify observer failed")
        return outcomes, decision

    def rank_vectors(
        self,
        *,
        queries_new: np.ndarray,
        mapping: ActiveMapping,
        top_k: int,
        threshold: float | None,
    ) -> tuple[list[IdentifyOutcome], Decision]:
        """Identify from the backbone's unit vectors with ``mapping`` (a shadow candidate): the
        same search, scoring and decision rule as :meth:`identify` (the candidate's own
        calibration), no stage metrics recorded."""
        start = time.perf_counter()
        old = mapping.map(queries_new)
        n = int(queries_new.shape[0])
        times = [StageTimes(map=(time.perf_counter() - start) / max(n, 1)) for _ in range(n)]
        mapped = MappedFaces(
            vectors=old,
            queries_new=queries_new,
            backbone=self.backbone.model_id,
            transformer=mapping.version,
            threshold=mapping.threshold,
            timings=times,
            image_index=list(range(n)),
        )
        return self.rank(
            mapped=mapped, mapping=mapping, top_k=top_k, threshold=threshold, record=False
        )

    def rank(
        self,
        *,
        mapped: MappedFaces,
        mapping: ActiveMapping,
        top_k: int,
        threshold: float | None,
        filenames: Sequence[str | None] | None = None,
        record: bool = True,
        capture: tuple[bool, str | None] = (False, None),
    ) -> tuple[list[IdentifyOutcome], Decision]:
        """Search, (fused) scoring, identities and the open-set decision for mapped queries:
        one outcome per entry of ``mapped.timings`` (failed images carry their error)."""
        decision = decide_identify(
            requested=threshold,
            calibration=mapping.calibration,
            recommended=mapping.threshold,
            default=self.default_threshold,
            target_fpir=self.target_fpir,
            gallery=self.gallery_count(),
        )
        if self.migration is not None and self.migration.applies(mapping):
            candidates = self.migration.candidates(
                mapped=mapped,
                mapping=mapping,
                top_k=top_k,
                capture=capture,
                observe=self._observe,
            )
        else:
            candidates = self._candidates(
                mapped=mapped, mapping=mapping, top_k=top_k, record=record
            )
        outcomes: list[IdentifyOutcome] = []
        for i, timings in enumerate(mapped.timings):
            found = candidates.get(i, [])
            top = found[0] if found else None
            outcomes.append(
                IdentifyOutcome(
                    index=i,
                    filename=filenames[i] if filenames is not None else None,
                    candidates=found,
                    match=top if top is not None and top.score >= decision.threshold else None,
                    backbone=mapped.backbone,
                    transformer=mapped.transformer,
                    timings=timings,
                    error=mapped.errors.get(i),
                )
            )
        return outcomes, decision

    def _candidates(
        self, *, mapped: MappedFaces, mapping: ActiveMapping, top_k: int, record: bool = True
    ) -> dict[int, list[Candidate]]:
        """Per usable upload index: its candidates, best first, one per identity."""
        observe = self._observe if record else (lambda stage, seconds: None)
        n = len(mapped.image_index)
        if n == 0:
            return {}
        # Several faces of one identity may sit in the gallery: over-fetch, then keep each
        # identity's best face so `top_k` counts identities.
        rerank_s = 0.0
        if mapping.two_way:
            hits_per_query, search_s, rerank_s = fused_hits(
                self.search_with_vectors, mapped=mapped, mapping=mapping, top_k=top_k
            )
            observe("rerank", rerank_s)
        else:
            start = time.perf_counter()
            hits_per_query = self.search(mapped.vectors, top_k * 4)
            search_s = time.perf_counter() - start
        start = time.perf_counter()
        best = top_identities(hits_per_query, lookup=self.lookup, top_k=top_k)
        lookup_s = time.perf_counter() - start
        observe("search", search_s)
        observe("lookup", lookup_s)
        out: dict[int, list[Candidate]] = {}
        for row, i in enumerate(mapped.image_index):
            out[i] = [
                Candidate(
                    identity_id=hit.identity_id,
                    external_id=hit.external_id,
                    name=hit.name,
                    score=score,
                    face_id=hit.face_id,
                )
                for hit, score in best[row]
            ]
            t = mapped.timings[i]
            t.search, t.rerank, t.lookup = search_s / n, rerank_s / n, lookup_s / n
        return out

    def verify(
        self,
        *,
        image: ImageUpload,
        identity_vectors: Callable[[], tuple[np.ndarray, np.ndarray]],
        threshold: float | None,
    ) -> tuple[float, int | None, Decision, MappedFaces]:
        """Best score between the image and the identity's gallery vectors: the cosine in the
        old space, or the fused score for a two-way transformer.

        ``identity_vectors()`` returns (face_ids [m], vectors [m, d_old] normalised); it raises
        NotFound for an unknown identity. Returns (score, best face id, the 1:1 decision rule
        (:func:`service.decision.decide_verify`), mapped).
        """
        face_ids, vectors = identity_vectors()
        mapping = self.active_mapping()
        mapped = self.map_images(images=[image], mapping=mapping)
        decision = decide_verify(
            requested=threshold,
            calibration=mapping.calibration,
            recommended=mapping.threshold,
            default=self.default_threshold,
            target_far=self.verify_far,
        )
        start = time.perf_counter()
        if len(face_ids) == 0:
            score, best = -1.0, None
        else:
            map_gallery = mapping.map_gallery if mapping.two_way else None
            if map_gallery is not None:
                stored = np.asarray(vectors, dtype=np.float32)
                sims = fused_scores(
                    query_old=mapped.vectors[:1],
                    query_new=mapped.queries_new[:1],
                    gallery_old=stored,
                    gallery_new=map_gallery(stored),
                    weight=mapping.fusion_weight,
                )[0]
            else:
                sims = np.asarray(vectors, dtype=np.float32) @ mapped.vectors[0]
            j = int(np.argmax(sims))
            score, best = float(sims[j]), int(face_ids[j])
        mapped.timings[0].search = time.perf_counter() - start
        return score, best, decision, mapped

    def enrol(
        self,
        *,
        images: Sequence[ImageUpload],
        check_identity: Callable[[], object],
        store: Callable[[np.ndarray, str, np.ndarray], list[T]],
    ) -> tuple[list[T], MappedFaces]:
        """Map each image into the old space with ONE snapshot and store the vectors.

        ``check_identity()`` runs first (NotFound before any inference); ``store(vectors,
        transformer_version, native_vectors)`` writes them (SQL, then the stores) and returns
        what it stored.
        """
        check_identity()
        mapped = self.map_images(images=images)
        return store(mapped.vectors, mapped.transformer, mapped.queries_new), mapped
