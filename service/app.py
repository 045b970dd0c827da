"""The FastAPI application: ``create_app(settings)`` + a lifespan that builds everything.

Importing this module starts nothing. ``create_app()`` with no argument reads the settings from
the environment (so ``uvicorn --factory service.app:create_app`` works). The lifespan checks the
configuration (a broken manifest stops the process), fixes the FAISS thread count for the
process, and returns at once so the server binds; in the background (:mod:`service.startup`) it
migrates the database, opens the engine, bootstraps the admin key, loads the backbone (ONNX),
the FAISS gallery (reconciled with SQL) and the active transformer, starts the pollers and a
bounded inference thread pool. ``/readyz`` and the data routes answer 503 until that is done
(:func:`wait_until_started` waits for it in-process). Shutdown undoes it in reverse and saves
the index.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.api import (
    admin,
    gallery,
    health,
    identify,
    identities,
    migration,
    operator,
    rollout,
)
from service.api.auth import AuthMiddleware, FailedAuthLimiter
from service.api.docs import install_docs
from service.api.problems import (
    BodyLimitMiddleware,
    RequestContextMiddleware,
    install_problem_handlers,
)
from service.api.state import InferencePool, ServiceState
from service.api.tags import OPENAPI_TAGS
from service.console import install_console
from service.db.session import make_engine, make_session_factory, upgrade_database
from service.errors import ServiceUnavailable
from service.gallery.opening import open_gallery
from service.gallery.store import set_faiss_threads
from service.gallery.sync import GallerySync
from service.inference.backbone import OnnxBackbone
from service.inference.detect import make_detector
from service.inference.facecheck import CropFaceCheck, make_face_check
from service.keys import bootstrap_admin_key
from service.metrics import MetricsMiddleware, ServiceMetrics
from service.pipeline import Pipeline
from service.pipeline_wiring import build_pipeline
from service.registry.holder import ActiveTransformerHolder
from service.registry.shadow import ShadowEvaluator
from service.registry.store import backbone_facts_of
from service.settings import ServiceSettings
from service.startup import Startup, preflight
from service.threads import Poller, configure_faiss_threads

log = logging.getLogger("facebridge.app")

API_VERSION = "1"
# Queue depth per inference thread before the service answers 503 instead of queueing more.
PENDING_PER_THREAD = 32
# Images per backbone run. Measured with the kit MobileFaceNet on one ORT thread: batch 1 costs
# ~12.5 ms CPU per image, batch 16 ~16.5 ms; so on CPU a multi-image request runs image by image.
CPU_BACKBONE_BATCH = 1
GPU_BACKBONE_BATCH = 64


def _body_limits(settings: ServiceSettings) -> Callable[[str], int | None]:
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
        preflight(settings)
        configure_faiss_threads(settings.faiss_threads)  # before anything loads FAISS
        startup: Startup[ServiceState] = Startup(
            build=lambda stack, step: _start(
                settings=settings, metrics=metrics, stack=stack, step=step
            ),
            on_ready=lambda state: setattr(app.state, "facebridge", state),
        )
        app.state.facebridge_startup = startup
        startup.start()
        try:
            yield
        finally:
            app.state.facebridge = None
            startup.stop()

    app = FastAPI(
        title="facebridge",
        version=API_VERSION,
        summary="Face identification across an embedding-model upgrade, without re-enrolment.",
        openapi_tags=OPENAPI_TAGS,
        lifespan=lifespan,
        docs_url=None,  # served offline by service.api.docs
        redoc_url=None,
    )
    app.state.facebridge = None
    app.state.facebridge_startup = None
    install_problem_handlers(app)
    for module in (identify, identities, gallery, admin, rollout, operator, migration, health):
        app.include_router(module.router)
    install_docs(app)
    install_console(app)
    # Added last = outermost: the request id exists before anything else runs; the key is
    # checked from the headers before the body limit (and the app) reads a byte of the body.
    app.add_middleware(BodyLimitMiddleware, limit_for=_body_limits(settings))
    app.add_middleware(
        AuthMiddleware,
        limiter=FailedAuthLimiter(
            limit=settings.auth_failure_limit, window_seconds=settings.auth_failure_window_seconds
        ),
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestContextMiddleware)
    return app


# ---------------------------------------------------------------------------------------------
# lifespan
# ---------------------------------------------------------------------------------------------
def _load_backbone(settings: ServiceSettings) -> OnnxBackbone | None:
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


def _start(
    *,
    settings: ServiceSettings,
    metrics: ServiceMetrics,
    stack: ExitStack,
    step: Callable[[str], None],
) -> ServiceState:
    """Build everything in order; ``stack`` undoes it in reverse (also when a step fails).
    ``step(what)`` names each part for /readyz (and stops here when the server is stopping)."""
    if not logging.getLogger().handlers:  # uvicorn configures only its own loggers
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    set_faiss_threads(settings.faiss_threads)  # this thread rebuilds the index
    step("migrating the database")
    engine, session_factory = _open_database(settings=settings, stack=stack)
    step("loading the backbone")
    backbone = _load_backbone(settings)
    step("loading the face detector")
    detector = make_detector(settings.detector)
    face_check = _make_face_check(settings)
    step("opening the gallery index")
    gallery_sync = _open_gallery_index(
        settings=settings, session_factory=session_factory, stack=stack
    )
    step("loading the active transformer")
    holder = _start_holder(
        settings=settings,
        metrics=metrics,
        session_factory=session_factory,
        backbone=backbone,
        stack=stack,
    )
    pool = InferencePool(
        threads=settings.inference_threads,
        max_pending=settings.inference_threads * PENDING_PER_THREAD,
        # OpenMP's thread count is per calling thread: set it in every worker, not just here.
        thread_initializer=lambda: set_faiss_threads(settings.faiss_threads),
    )
    stack.callback(pool.shutdown)
    pipeline = build_pipeline(
        settings=settings,
        metrics=metrics,
        backbone=backbone,
        detector=detector,
        face_check=face_check,
        holder=holder,
        gallery_sync=gallery_sync,
        session_factory=session_factory,
        engine=engine,
    )
    stack.callback(getattr(pipeline.backbone, "close", lambda: None))  # a MicroBatcher's thread
    step("starting the shadow evaluator and the pollers")
    shadow, gallery_poller = _start_background(
        settings=settings,
        metrics=metrics,
        session_factory=session_factory,
        pipeline=pipeline,
        gallery_sync=gallery_sync,
        stack=stack,
    )
    state = ServiceState(
        settings=settings,
        metrics=metrics,
        pool=pool,
        engine=engine,
        session_factory=session_factory,
        backbone=backbone,
        holder=holder,
        gallery=gallery_sync,
        pipeline=pipeline,
        gallery_poller=gallery_poller,
        shadow=shadow,
    )
    state.refresh_gauges()
    return state


def _open_database(
    *, settings: ServiceSettings, stack: ExitStack
) -> tuple[Engine, sessionmaker[Session]]:
    """Migrate, open the engine (disposed by ``stack``) and bootstrap the admin key."""
    upgrade_database(url=settings.database_url)
    engine = make_engine(settings.database_url)
    stack.callback(engine.dispose)
    session_factory = make_session_factory(engine)
    with session_factory() as session:
        bootstrap_admin_key(session=session, settings=settings)
    return engine, session_factory


def _make_face_check(settings: ServiceSettings) -> CropFaceCheck | None:
    face_check = make_face_check(settings.face_check, upscale=settings.face_check_upscale)
    if face_check is None:
        log.warning(
            "face check off (FACEBRIDGE_FACE_CHECK=%s%s): 112x112 uploads are used unchecked",
            settings.face_check,
            "; dlib is not installed" if settings.face_check == "auto" else "",
        )
    return face_check


def _open_gallery_index(
    *, settings: ServiceSettings, session_factory: sessionmaker[Session], stack: ExitStack
) -> GallerySync:
    """The gallery's stores, reconciled with SQL; ``stack`` saves and closes them."""
    gallery_sync, report = open_gallery(session_factory=session_factory, settings=settings)
    log.info(
        "gallery opened (%s, %s): %s",
        settings.vector_store,
        gallery_sync.primary.index_type,
        report.detail,
    )
    stack.callback(gallery_sync.close)
    stack.callback(_save_gallery, gallery_sync=gallery_sync)
    return gallery_sync


def _start_holder(
    *,
    settings: ServiceSettings,
    metrics: ServiceMetrics,
    session_factory: sessionmaker[Session],
    backbone: OnnxBackbone | None,
    stack: ExitStack,
) -> ActiveTransformerHolder:
    """The active transformer, loaded now and polled for swaps until ``stack`` stops it."""
    holder = ActiveTransformerHolder(
        session_factory=session_factory,
        settings=settings,
        serving=backbone_facts_of(backbone),
        on_load_error=lambda message: metrics.transformer_load_failures.inc(),
        thread_initializer=lambda: set_faiss_threads(settings.faiss_threads),
    )
    holder.refresh()
    holder.start_polling()
    stack.callback(holder.stop_polling)
    return holder


def _start_background(
    *,
    settings: ServiceSettings,
    metrics: ServiceMetrics,
    session_factory: sessionmaker[Session],
    pipeline: Pipeline,
    gallery_sync: GallerySync,
    stack: ExitStack,
) -> tuple[ShadowEvaluator, Poller]:
    """The shadow evaluator and the gallery poller, stopped by ``stack``."""
    shadow = ShadowEvaluator(
        session_factory=session_factory,
        settings=settings,
        rank=pipeline.rank_vectors,
        metrics=metrics,
        thread_initializer=lambda: set_faiss_threads(settings.faiss_threads),
    )
    shadow.refresh()
    shadow.start()
    stack.callback(shadow.stop)
    pipeline.after_identify = shadow.offer
    # Faces written by other workers/replicas (or the CLI) reach this process's store through
    # the face change log (the same task compacts the log and rebuilds an outgrown index); a
    # shadow run started through another worker reaches this one.
    gallery_poller = Poller(
        interval_seconds=settings.generation_poll_seconds,
        tasks=[gallery_sync.maintain, shadow.refresh],
        name="facebridge-gallery-poller",
        thread_initializer=lambda: set_faiss_threads(settings.faiss_threads),
    )
    gallery_poller.start()
    stack.callback(gallery_poller.stop)
    return shadow, gallery_poller


def _save_gallery(*, gallery_sync: GallerySync) -> None:
    try:
        gallery_sync.save()
    except Exception:  # the index is a cache: losing it costs a rebuild, never data
        log.exception("could not save the gallery index at shutdown")
