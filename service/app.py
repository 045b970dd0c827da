"""The FastAPI application: ``create_app(settings)`` + a lifespan that builds everything.

Importing this module starts nothing. ``create_app()`` with no argument reads the settings from
the environment (so ``uvicorn --factory service.app:create_app`` works); the lifespan then
migrates the database, opens the engine, bootstraps the admin key, loads the backbone (ONNX),
the FAISS gallery (reconciled with SQL) and the active transformer, starts the generation poller
and a bounded inference thread pool; shutdown stops them in reverse and saves the index.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI

from service.api import admin, gallery, health, identify, identities
from service.api.deps import InferencePool, ServiceState
from service.api.problems import (
    BodyLimitMiddleware,
    RequestContextMiddleware,
    install_problem_handlers,
)
from service.errors import ContractError, ServiceUnavailable
from service.metrics import MetricsMiddleware, ServiceMetrics
from service.pipeline import ActiveMapping, GalleryHit, Pipeline
from service.settings import ServiceSettings

log = logging.getLogger("facebridge.app")

API_VERSION = "1"
OPENAPI_TAGS = [
    {"name": "identify", "description": "Identify and verify faces against the gallery."},
    {"name": "identities", "description": "People and their enrolled faces."},
    {"name": "gallery", "description": "Bulk import of legacy vectors; gallery statistics."},
    {"name": "admin", "description": "Transformer versions and API keys (admin scope)."},
    {"name": "health", "description": "Liveness, readiness, Prometheus metrics."},
]
# Queue depth per inference thread before the service answers 503 instead of queueing more.
PENDING_PER_THREAD = 32
# Images per backbone run. Measured with the kit MobileFaceNet on one ORT thread: batch 1 costs
# ~12.5 ms CPU per image, batch 16 ~16.5 ms; so on CPU a multi-image request runs image by image.
CPU_BACKBONE_BATCH = 1
GPU_BACKBONE_BATCH = 64


def _body_limits(settings: ServiceSettings) -> Any:
    """Per-route request body limits, enforced while the body streams in."""

    def limit_for(path: str) -> int | None:
        if path.startswith("/v1/gallery/import"):
            return settings.max_import_bytes
        if path.startswith("/v1/admin/transformers"):
            return settings.max_transformer_bytes
        if path.startswith("/v1/"):
            return settings.max_upload_bytes
        return None

    return limit_for


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The facebridge HTTP API. ``settings`` default: read from the environment now."""
    settings = settings if settings is not None else ServiceSettings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = _start(settings=settings, metrics=metrics)
        app.state.facebridge = state
        try:
            yield
        finally:
            app.state.facebridge = None
            _stop(state)

    app = FastAPI(
        title="facebridge",
        version=API_VERSION,
        summary="Face identification across an embedding-model upgrade, without re-enrolment.",
        openapi_tags=OPENAPI_TAGS,
        lifespan=lifespan,
    )
    app.state.facebridge = None
    install_problem_handlers(app)
    for module in (identify, identities, gallery, admin, health):
        app.include_router(module.router)
    # Added last = outermost: the request id exists before anything else runs.
    app.add_middleware(BodyLimitMiddleware, limit_for=_body_limits(settings))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestContextMiddleware)
    return app


# ---------------------------------------------------------------------------------------------
# lifespan
# ---------------------------------------------------------------------------------------------
def _load_backbone(settings: ServiceSettings) -> Any:
    from service.inference.backbone import OnnxBackbone

    if settings.backbone_manifest is None:
        log.warning("FACEBRIDGE_BACKBONE_MANIFEST unset: identify/verify/enrol answer 503")
        return None
    backbone = OnnxBackbone(
        settings.backbone_manifest,
        providers=settings.providers,
        intra_op_threads=settings.ort_intra_op_threads,
        batch_size=CPU_BACKBONE_BATCH if settings.device == "cpu" else GPU_BACKBONE_BATCH,
    )
    log.info(
        "backbone %s loaded; ONNX Runtime providers asked %s, active %s",
        backbone.model_id,
        list(settings.providers),
        list(backbone.providers),
    )
    if settings.require_cuda and "CUDAExecutionProvider" not in backbone.providers:
        raise ServiceUnavailable(
            f"FACEBRIDGE_REQUIRE_CUDA is set but ONNX Runtime runs {list(backbone.providers)}"
        )
    return backbone


def _start(*, settings: ServiceSettings, metrics: ServiceMetrics) -> ServiceState:
    from service.db.session import make_engine, make_session_factory, upgrade_database
    from service.gallery.store import GallerySync, open_gallery, set_faiss_threads
    from service.inference.detect import make_detector
    from service.keys import bootstrap_admin_key
    from service.registry.holder import ActiveTransformerHolder, Poller

    upgrade_database(url=settings.database_url)
    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    with session_factory() as session:
        bootstrap_admin_key(session=session, settings=settings)
    set_faiss_threads(settings.faiss_threads)
    backbone = _load_backbone(settings)
    detector = make_detector(settings.detector)
    index, report = open_gallery(session_factory=session_factory, settings=settings)
    log.info("gallery opened: %s", getattr(report, "detail", report))
    holder = ActiveTransformerHolder(session_factory=session_factory, settings=settings)
    holder.refresh()
    holder.start_polling()
    # Faces written by other workers/replicas (or the CLI) reach this process's FAISS index.
    gallery_sync = GallerySync(session_factory=session_factory, index=index)
    gallery_sync.refresh()
    gallery_poller = Poller(
        interval_seconds=settings.generation_poll_seconds,
        tasks=[gallery_sync.refresh],
        name="facebridge-gallery-poller",
    )
    gallery_poller.start()
    pool = InferencePool(
        threads=settings.inference_threads,
        max_pending=settings.inference_threads * PENDING_PER_THREAD,
        # OpenMP's thread count is per calling thread: set it in every worker, not just here.
        thread_initializer=lambda: set_faiss_threads(settings.faiss_threads),
    )
    state = ServiceState(
        settings=settings,
        metrics=metrics,
        pool=pool,
        session_factory=session_factory,
        pipeline=None,
        backbone=backbone,
        holder=holder,
        index=index,
        engine=engine,
    )
    state.extras["gallery_poller"] = gallery_poller
    state.pipeline = _build_pipeline(state, detector=detector)
    state.extras.update(
        identity_vectors=lambda identity_id: _identity_vectors(state, identity_id),
        readiness=lambda: _readiness(state),
        refresh_gauges=lambda: _refresh_gauges(state),
    )
    _refresh_gauges(state)
    return state


def _stop(state: ServiceState) -> None:
    from service.gallery.store import save_gallery

    state.holder.stop_polling()
    state.extras["gallery_poller"].stop()
    state.pool.shutdown()
    try:
        save_gallery(index=state.index, settings=state.settings)
    except Exception:  # the index is a cache: losing it costs a rebuild, never data
        log.exception("could not save the FAISS index at shutdown")
    state.engine.dispose()


class _NoBackbone:
    """Stands in when no backbone is configured: every image route answers 503."""

    model_id = "none"
    output_dim = 0

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        raise ServiceUnavailable("no backbone configured: set FACEBRIDGE_BACKBONE_MANIFEST")


def _build_pipeline(state: ServiceState, *, detector: Any) -> Pipeline:
    from service.identities import identities_for_faces

    settings = state.settings

    def snapshot() -> ActiveMapping | None:
        active = state.holder.current()  # ONE read: the request keeps this version throughout
        if active.version is None or active.session is None:
            return None
        return ActiveMapping(
            version=active.version, map=active.session.map, threshold=active.threshold
        )

    def search(vectors: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(hits.ids, hits.scores) for hits in state.index.search(vectors, k=k)]

    def lookup(face_ids: Sequence[int]) -> dict[int, GalleryHit]:
        with state.session_factory() as session:
            found = identities_for_faces(session=session, face_ids=list(face_ids))
        return {
            int(face_id): GalleryHit(
                face_id=int(face_id),
                identity_id=int(identity.id),
                external_id=identity.external_id,
                name=identity.name,
            )
            for face_id, identity in found.items()
        }

    return Pipeline(
        backbone=state.backbone if state.backbone is not None else _NoBackbone(),
        detector=detector,
        snapshot=snapshot,
        search=search,
        lookup=lookup,
        max_image_bytes=settings.max_upload_bytes,
        max_image_pixels=settings.max_image_pixels,
        default_threshold=settings.default_threshold,
        observe=state.metrics.observe_stage,
    )


def _identity_vectors(state: ServiceState, identity_id: int) -> tuple[np.ndarray, np.ndarray]:
    from service.identities import face_vectors

    with state.session_factory() as session:
        return face_vectors(session=session, identity_id=identity_id)


def _readiness(state: ServiceState) -> dict[str, str]:
    """One line per check; a line starting with ``fail`` makes /readyz answer 503."""
    from service.db.session import database_reachable
    from service.gallery.store import check_consistency

    checks: dict[str, str] = {}
    db_ok = database_reachable(engine=state.engine)
    checks["database"] = "ok" if db_ok else "fail: unreachable"
    checks["backbone"] = (
        state.backbone.model_id if state.backbone is not None else "fail: not configured"
    )
    active = state.holder.current()
    last_error = getattr(state.holder, "last_error", None)
    if active.version is not None:
        checks["transformer"] = active.version
    elif last_error:
        checks["transformer"] = f"fail: {last_error}"
    else:
        checks["transformer"] = "none active (identify answers 503 until one is activated)"
    if db_ok:
        try:
            with state.session_factory() as session:
                report = check_consistency(session=session, index=state.index)
            checks["index"] = (
                f"ok: {report.index_count} vectors, consistent with SQL"
                if report.consistent
                else f"fail: {report.detail}"
            )
        except ContractError as exc:
            checks["index"] = f"fail: {exc}"
    else:
        checks["index"] = "fail: database unreachable"
    return checks


def _refresh_gauges(state: ServiceState) -> None:
    state.metrics.gallery_size.set(state.index.ntotal)
    state.metrics.set_active_transformer(state.holder.current().version)
