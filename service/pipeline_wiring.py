"""The identify :class:`service.pipeline.Pipeline` as the app wires it from its parts: the
active transformer's snapshot (NaN/inf counted per version), the gallery search (vectors from
SQL for a compressed index), the live gallery counter, the Core identity lookup and the
progressive migration. Importing it starts nothing."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.decision import GalleryCounter
from service.errors import ServiceUnavailable
from service.gallery.face_reads import face_vectors_by_id
from service.gallery.hits import gallery_hits, gallery_hits_counted
from service.gallery.store import identities_with_faces
from service.gallery.sync import GallerySync
from service.inference.backbone import NoBackbone, OnnxBackbone
from service.inference.detect import FaceDetector
from service.inference.facecheck import CropFaceCheck
from service.inference.micro_batch import micro_batched
from service.inference.transformer import counting_nonfinite
from service.metrics import ServiceMetrics
from service.migration.rule_settings import live_migration
from service.pipeline import ActiveMapping, Pipeline
from service.registry.holder import ActiveTransformerHolder
from service.settings import ServiceSettings
from service.vectors import QUERIES_FLIP, QUERIES_PLAIN

Hits = list[tuple[np.ndarray, np.ndarray]]
HitsWithVectors = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def snapshot_reader(
    *, settings: ServiceSettings, metrics: ServiceMetrics, holder: ActiveTransformerHolder
) -> Callable[[], ActiveMapping | None]:
    """The pipeline's ``snapshot``: the active mapping read once per request."""
    queries = QUERIES_FLIP if settings.flip_average_queries else QUERIES_PLAIN

    def snapshot() -> ActiveMapping | None:
        active = holder.current()  # ONE read: the request keeps this version throughout
        runner = active.runner
        if active.version is None or runner is None:
            refused = holder.status()
            if refused.expected_version is not None:
                raise ServiceUnavailable(
                    f"transformer {refused.expected_version} is active but this worker does not "
                    f"serve it: {refused.last_error}"
                )
            return None
        mapping = ActiveMapping.from_runner(
            version=active.version, runner=runner, threshold=active.threshold, queries=queries
        )
        nonfinite = metrics.transformer_nonfinite.labels(version=active.version).inc
        # NaN/inf out of either head: counted per version, answered 503 naming it.
        return replace(
            mapping,
            map=counting_nonfinite(mapping.map, version=active.version, count=nonfinite),
            map_gallery=None
            if mapping.map_gallery is None
            else counting_nonfinite(mapping.map_gallery, version=active.version, count=nonfinite),
        )

    return snapshot


def gallery_search(
    *, gallery_sync: GallerySync, session_factory: sessionmaker[Session]
) -> tuple[Callable[[np.ndarray, int], Hits], Callable[[np.ndarray, int], HitsWithVectors]]:
    """(``search``, ``search_with_vectors``) over the primary store, read once per call."""

    def search(vectors: np.ndarray, k: int) -> Hits:
        store = gallery_sync.primary  # read once: a rebuild may swap it
        return [(hits.ids, hits.scores) for hits in store.search(vectors, k=k)]

    def search_with_vectors(vectors: np.ndarray, k: int) -> HitsWithVectors:
        store = gallery_sync.primary
        if getattr(store, "exact_vectors", True):
            found = store.search(vectors, k=k, with_vectors=True)
            return [(hits.ids, hits.scores, hits.vectors) for hits in found]  # type: ignore[misc]
        # A compressed index keeps codes, not vectors: the candidates' vectors come from SQL.
        found = store.search(vectors, k=k)
        with session_factory() as session:
            held = face_vectors_by_id(
                session=session, face_ids=np.concatenate([h.ids for h in found])
            )
        out = []
        for hits in found:
            keep = np.asarray([int(i) in held for i in hits.ids], bool)
            rows = [held[int(i)] for i in hits.ids[keep]]
            matrix = np.stack(rows) if rows else np.zeros((0, store.dim or 0), np.float32)
            out.append((hits.ids[keep], hits.scores[keep], matrix))
        return out

    return search, search_with_vectors


def gallery_counter(
    *, settings: ServiceSettings, gallery_sync: GallerySync, session_factory: sessionmaker[Session]
) -> GalleryCounter:
    """faces = the index's live count (this and, through GallerySync, every other replica's
    writes); identities are re-counted in SQL when it moves (service.decision.GalleryCounter)."""

    def count_identities() -> int:
        with session_factory() as session:
            return identities_with_faces(session)

    return GalleryCounter(
        faces=lambda: sum(store.ntotal for store in list(gallery_sync.stores.values())),
        identities=count_identities,
        max_age_s=settings.generation_poll_seconds,
    )


def build_pipeline(
    *,
    settings: ServiceSettings,
    metrics: ServiceMetrics,
    backbone: OnnxBackbone | None,
    detector: FaceDetector | None,
    face_check: CropFaceCheck | None,
    holder: ActiveTransformerHolder,
    gallery_sync: GallerySync,
    session_factory: sessionmaker[Session],
    engine: Engine,
) -> Pipeline:
    search, search_with_vectors = gallery_search(
        gallery_sync=gallery_sync, session_factory=session_factory
    )
    counter = gallery_counter(
        settings=settings, gallery_sync=gallery_sync, session_factory=session_factory
    )
    return Pipeline(
        backbone=NoBackbone() if backbone is None else micro_batched(backbone, settings),
        detector=detector,
        snapshot=snapshot_reader(settings=settings, metrics=metrics, holder=holder),
        search=search,
        search_with_vectors=search_with_vectors,
        lookup=functools.partial(gallery_hits, engine),  # one Core query, no ORM session
        max_image_bytes=settings.max_upload_bytes,
        max_image_pixels=settings.max_image_pixels,
        max_request_pixels=settings.max_request_pixels,
        detect_max_side=settings.detect_max_side,
        default_threshold=settings.default_threshold,
        flip_average_queries=settings.flip_average_queries,
        observe=metrics.observe_stage,
        face_check=face_check,
        gallery_count=counter.current,
        target_fpir=settings.target_fpir,
        verify_far=settings.verify_target_far,
        migration=live_migration(
            settings=settings,
            gallery=gallery_sync,
            session_factory=session_factory,
            lookup=functools.partial(gallery_hits_counted, engine),  # + counts, same query
            native_space=None if backbone is None else backbone.model_id,
            on_capture=metrics.captures.inc,
        ),
    )
