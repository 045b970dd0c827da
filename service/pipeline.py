"""Identify / verify / enrol orchestration: bytes in, old-space vectors and candidates out.

decode (size + pixel limits) -> aligned faces (shared pipeline: pass-through for 112 x 112 crops,
else detect + align) -> backbone (one call per request; L2-normalised there; optionally
flip-averaged: each crop and its mirror image in the same call) -> the active transformer, read
ONCE per request as an immutable snapshot (normalised there) -> FAISS inner-product search ->
for a two-way transformer, re-scoring of the search's candidates with the fused score
(:mod:`service.fusion`) -> identities from SQL.

Everything here is blocking (Pillow, ORT, FAISS, SQL) and runs in the app's bounded thread pool,
never on the event loop. The storage side is reached through three small callables so this module
does not care how the gallery and registry are built (see ``service.app``).

Micro-batching of concurrent requests into one backbone call was measured and left out: on these
CPUs the kit MobileFaceNet runs ~80 images/s per thread at batch 1 and LESS per image at batch 16,
so merging requests would only add queueing latency. A request with several images is still one
backbone call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from service.errors import FacebridgeError, InvalidInput, ServiceUnavailable
from service.fusion import RERANK_DEPTH, candidate_scores, fused_scores
from service.inference.detect import FaceDetector
from service.inference.faces import FaceCrop, aligned_faces, face_crops
from service.inference.images import decode_image

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveMapping:
    """The transformer a request uses, read once: version id + its mapping + its threshold.

    A two-way transformer also brings ``map_gallery`` (old -> new, L2-normalised there) and a
    ``fusion_weight`` < 1: scores are then the fused ``w * <f(q), g> + (1 - w) * <q, h(g)>``.
    """

    version: str
    map: Callable[[np.ndarray], np.ndarray]
    threshold: float | None = None
    fusion_weight: float = 1.0
    map_gallery: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def two_way(self) -> bool:
        return self.map_gallery is not None and self.fusion_weight < 1.0

    @classmethod
    def from_session(
        cls, *, version: str, session: TransformerRunner, threshold: float | None
    ) -> ActiveMapping:
        """The mapping of a loaded transformer session (active, or a shadow candidate)."""
        return cls(
            version=version,
            map=session.map,
            threshold=threshold,
            fusion_weight=session.fusion_weight,
            map_gallery=session.map_gallery if session.two_way else None,
        )


class TransformerRunner(Protocol):
    """What a mapping needs of ``service.inference.transformer.TransformerSession``."""

    @property
    def fusion_weight(self) -> float: ...

    @property
    def two_way(self) -> bool: ...

    def map(self, vectors: np.ndarray) -> np.ndarray: ...

    def map_gallery(self, vectors: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class GalleryHit:
    """What the identify response needs to know about one gallery vector (a face row in SQL)."""

    face_id: int
    identity_id: int
    external_id: str | None
    name: str | None


@dataclass(frozen=True)
class ImageUpload:
    data: bytes
    filename: str | None = None


@dataclass
class StageTimes:
    decode: float = 0.0
    align: float = 0.0
    embed: float = 0.0
    map: float = 0.0
    search: float = 0.0
    rerank: float = 0.0  # fused re-scoring of the candidates (two-way transformers only)
    lookup: float = 0.0

    def as_ms(self) -> dict[str, float]:
        stages = {
            "decode_ms": self.decode,
            "align_ms": self.align,
            "embed_ms": self.embed,
            "map_ms": self.map,
            "search_ms": self.search,
            "rerank_ms": self.rerank,
            "lookup_ms": self.lookup,
        }
        out = {k: round(v * 1000.0, 3) for k, v in stages.items()}
        out["total_ms"] = round(sum(stages.values()) * 1000.0, 3)
        return out


@dataclass(frozen=True)
class Candidate:
    identity_id: int
    external_id: str | None
    name: str | None
    score: float
    face_id: int


@dataclass
class IdentifyOutcome:
    index: int
    filename: str | None
    candidates: list[Candidate]
    match: Candidate | None
    backbone: str
    transformer: str
    timings: StageTimes = field(default_factory=StageTimes)


@dataclass
class MappedFaces:
    """Old-space vectors for a request's images, with the versions that made them."""

    vectors: np.ndarray  # [n, d_old], L2-normalised by the transformer runner
    queries_new: np.ndarray  # [n, d_new], the backbone's unit vectors (fused scoring needs them)
    backbone: str
    transformer: str
    threshold: float | None
    timings: list[StageTimes]


class Backbone(Protocol):
    """What the pipeline needs of a backbone (``service.inference.backbone.OnnxBackbone``)."""

    @property
    def model_id(self) -> str: ...

    def embed(self, aligned: np.ndarray, *, flip_average: bool = False) -> np.ndarray: ...


# search(vectors [n, d], k) -> per query (face ids, scores), best first, empty slots dropped.
SearchFn = Callable[[np.ndarray, int], list[tuple[np.ndarray, np.ndarray]]]
# search_with_vectors(vectors, k) -> per query (face ids, scores, stored vectors [len(ids), d]),
# the vectors read atomically with the search: what fused re-scoring needs.
SearchWithVectorsFn = Callable[[np.ndarray, int], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]
LookupFn = Callable[[Sequence[int]], dict[int, GalleryHit]]
SnapshotFn = Callable[[], ActiveMapping | None]


@dataclass(frozen=True)
class IdentifyReply:
    """What an identify reply was made of: handed to ``after_identify`` (the shadow
    evaluation) once the reply is computed; it must never change the reply."""

    queries_new: np.ndarray  # [n, d_new] the backbone's unit vectors
    outcomes: list[IdentifyOutcome]
    top_k: int
    threshold: float | None  # as requested (None: each version's own)
    transformer: str


AfterIdentifyFn = Callable[[IdentifyReply], None]


class Pipeline:
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
        flip_average_queries: bool = False,
        observe: Callable[[str, float], None] | None = None,
        after_identify: AfterIdentifyFn | None = None,
    ) -> None:
        self.backbone = backbone
        self.detector = detector
        self.snapshot = snapshot
        self.search = search
        self.search_with_vectors = search_with_vectors
        self.flip_average_queries = bool(flip_average_queries)
        self.lookup = lookup
        self.max_image_bytes = int(max_image_bytes)
        self.max_image_pixels = int(max_image_pixels)
        self.default_threshold = float(default_threshold)
        self._observe = observe or (lambda stage, seconds: None)
        self.after_identify = after_identify
        # dlib's detector objects are not documented as thread-safe: one detection at a time.
        self._detector_lock = threading.Lock()

    # -- shared stages -------------------------------------------------------------------------
    def active_mapping(self) -> ActiveMapping:
        mapping = self.snapshot()
        if mapping is None:
            raise ServiceUnavailable(
                "no active transformer: upload one and activate it "
                "(POST /v1/admin/transformers, then .../{version}/activate)"
            )
        return mapping

    def _crops(self, images: Sequence[ImageUpload]) -> tuple[np.ndarray, list[StageTimes]]:
        if not images:
            raise InvalidInput("no image: send at least one multipart part named 'image'")
        crops: list[np.ndarray] = []
        times: list[StageTimes] = []
        for i, upload in enumerate(images):
            t = StageTimes()
            try:
                start = time.perf_counter()
                image = decode_image(
                    upload.data, max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels
                )
                t.decode = time.perf_counter() - start
                start = time.perf_counter()
                if self.detector is None:
                    faces = aligned_faces(image, detector=None)
                else:
                    with self._detector_lock:
                        faces = aligned_faces(image, detector=self.detector)
                t.align = time.perf_counter() - start
            except FacebridgeError as exc:
                if len(images) > 1:
                    # Name the image so a batch caller knows which part failed.
                    exc.detail = f"image {i}: {exc.detail}"
                    exc.args = (exc.detail,)
                    exc.extra.setdefault("image_index", i)
                raise
            crops.append(faces[0])
            times.append(t)
            self._observe("decode", t.decode)
            self._observe("align", t.align)
        return np.stack(crops), times

    def detect(self, *, image: ImageUpload) -> tuple[tuple[int, int], list[FaceCrop]]:
        """(width, height) of the decoded image and its aligned faces, the one identify uses
        first; an aligned 112 x 112 crop passes through (no detection)."""
        decoded = decode_image(
            image.data, max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels
        )
        if self.detector is None:
            crops = face_crops(decoded, detector=None)
        else:
            with self._detector_lock:
                crops = face_crops(decoded, detector=self.detector, all_faces=True)
        return (int(decoded.shape[1]), int(decoded.shape[0])), crops

    def map_images(
        self, *, images: Sequence[ImageUpload], mapping: ActiveMapping | None = None
    ) -> MappedFaces:
        """Old-space vectors for each image (one face each), using ONE transformer snapshot."""
        mapping = mapping or self.active_mapping()
        crops, times = self._crops(images)
        n = len(times)
        start = time.perf_counter()
        if self.flip_average_queries:
            new = self.backbone.embed(crops, flip_average=True)
        else:
            new = self.backbone.embed(crops)
        embed_s = time.perf_counter() - start
        start = time.perf_counter()
        old = mapping.map(new)
        map_s = time.perf_counter() - start
        self._observe("embed", embed_s)
        self._observe("map", map_s)
        for t in times:
            t.embed, t.map = embed_s / n, map_s / n
        return MappedFaces(
            vectors=old,
            queries_new=new,
            backbone=self.backbone.model_id,
            transformer=mapping.version,
            threshold=mapping.threshold,
            timings=times,
        )

    def threshold_for(self, requested: float | None, mapping_threshold: float | None) -> float:
        if requested is not None:
            return float(requested)
        if mapping_threshold is not None:
            return float(mapping_threshold)
        return self.default_threshold

    # -- operations ----------------------------------------------------------------------------
    def identify(
        self, *, images: Sequence[ImageUpload], top_k: int, threshold: float | None
    ) -> tuple[list[IdentifyOutcome], float]:
        """Candidates per image, in upload order; returns them with the threshold applied."""
        mapping = self.active_mapping()
        mapped = self.map_images(images=images, mapping=mapping)
        outcomes, decision = self.rank(
            mapped=mapped,
            mapping=mapping,
            top_k=top_k,
            threshold=threshold,
            filenames=[image.filename for image in images],
        )
        if self.after_identify is not None:
            reply = IdentifyReply(
                queries_new=mapped.queries_new,
                outcomes=outcomes,
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
    ) -> tuple[list[IdentifyOutcome], float]:
        """Identify from the backbone's unit vectors with ``mapping`` (a shadow candidate): the
        same search, scoring and decision as :meth:`identify`, no stage metrics recorded."""
        start = time.perf_counter()
        old = mapping.map(queries_new)
        n = int(queries_new.shape[0])
        times = [StageTimes(map=(time.perf_counter() - start) / n) for _ in range(n)]
        mapped = MappedFaces(
            vectors=old,
            queries_new=queries_new,
            backbone=self.backbone.model_id,
            transformer=mapping.version,
            threshold=mapping.threshold,
            timings=times,
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
    ) -> tuple[list[IdentifyOutcome], float]:
        """Search, (fused) scoring, identities and the decision for already mapped queries."""
        observe = self._observe if record else (lambda stage, seconds: None)
        n = mapped.vectors.shape[0]
        decision = self.threshold_for(threshold, mapped.threshold)

        # Several faces of one identity may sit in the gallery: over-fetch, then keep each
        # identity's best face so `top_k` counts identities.
        rerank_s = 0.0
        if mapping.two_way:
            hits_per_query, search_s, rerank_s = self._fused_hits(
                mapped=mapped, mapping=mapping, top_k=top_k
            )
            observe("rerank", rerank_s)
        else:
            start = time.perf_counter()
            hits_per_query = self.search(mapped.vectors, top_k * 4)
            search_s = time.perf_counter() - start
        start = time.perf_counter()
        wanted = sorted({int(f) for ids, _ in hits_per_query for f in ids if f >= 0})
        hits = self.lookup(wanted) if wanted else {}
        lookup_s = time.perf_counter() - start
        observe("search", search_s)
        observe("lookup", lookup_s)

        outcomes: list[IdentifyOutcome] = []
        for i in range(n):
            seen: set[int] = set()
            candidates: list[Candidate] = []
            face_ids, scores = hits_per_query[i]
            for face_id, score in zip(face_ids, scores, strict=True):
                hit = hits.get(int(face_id))
                if face_id < 0 or hit is None or hit.identity_id in seen:
                    continue  # -1 = empty slot; None = deleted since the search
                seen.add(hit.identity_id)
                candidates.append(
                    Candidate(
                        identity_id=hit.identity_id,
                        external_id=hit.external_id,
                        name=hit.name,
                        score=float(score),
                        face_id=hit.face_id,
                    )
                )
                if len(candidates) == top_k:
                    break
            t = mapped.timings[i]
            t.search, t.rerank, t.lookup = search_s / n, rerank_s / n, lookup_s / n
            top = candidates[0] if candidates else None
            outcomes.append(
                IdentifyOutcome(
                    index=i,
                    filename=filenames[i] if filenames is not None else None,
                    candidates=candidates,
                    match=top if top is not None and top.score >= decision else None,
                    backbone=mapped.backbone,
                    transformer=mapped.transformer,
                    timings=t,
                )
            )
        return outcomes, decision

    def _fused_hits(
        self, *, mapped: MappedFaces, mapping: ActiveMapping, top_k: int
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
        found = self.search_with_vectors(mapped.vectors, max(top_k * 4, RERANK_DEPTH))
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

    def verify(
        self,
        *,
        image: ImageUpload,
        identity_vectors: Callable[[], tuple[np.ndarray, np.ndarray]],
        threshold: float | None,
    ) -> tuple[float, int | None, float, MappedFaces]:
        """Best score between the image and the identity's gallery vectors: the cosine in the
        old space, or the fused score for a two-way transformer.

        ``identity_vectors()`` returns (face_ids [m], vectors [m, d_old] normalised); it raises
        NotFound for an unknown identity. Returns (score, best face id, threshold, mapped).
        """
        face_ids, vectors = identity_vectors()
        mapping = self.active_mapping()
        mapped = self.map_images(images=[image], mapping=mapping)
        decision = self.threshold_for(threshold, mapped.threshold)
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
        store: Callable[[np.ndarray, str], list[T]],
    ) -> tuple[list[T], MappedFaces]:
        """Map each image into the old space with ONE snapshot and store the vectors.

        ``check_identity()`` runs first (NotFound before any inference); ``store(vectors,
        transformer_version)`` writes them (SQL, then FAISS) and returns what it stored.
        """
        check_identity()
        mapped = self.map_images(images=images)
        return store(mapped.vectors, mapped.transformer), mapped
