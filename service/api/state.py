"""What the lifespan builds and the routes use: :class:`ServiceState`, the bounded inference
pool and the short-lived cache of verified API keys. Nothing here runs at import."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.db.session import database_reachable
from service.errors import ContractError, ServiceUnavailable
from service.gallery.engines.base import VectorStore
from service.gallery.face_reads import face_vectors
from service.gallery.store import count_report
from service.gallery.sync import GallerySync
from service.inference.backbone import OnnxBackbone
from service.keys import ApiKeyInfo
from service.metrics import ServiceMetrics
from service.pipeline import Pipeline
from service.registry.holder import ActiveTransformerHolder
from service.registry.shadow import ShadowEvaluator
from service.settings import ServiceSettings
from service.threads import Poller

T = TypeVar("T")
KEY_CACHE_SECONDS = 5.0
MISMATCH_GRACE_S = 10.0  # a FAISS/SQL count mismatch lasting longer fails readiness


class InferencePool:
    """A bounded pool for blocking work (ORT, FAISS, Pillow, SQL behind them).

    ``max_pending`` bounds the queue: past it the service answers 503 instead of piling up.
    Context variables (the request id) travel into the worker thread.
    """

    def __init__(
        self,
        *,
        threads: int,
        max_pending: int,
        thread_initializer: Callable[[], None] | None = None,
    ) -> None:
        self.threads = max(1, int(threads))
        # Per-thread set-up (e.g. FAISS OpenMP threads: omp_set_num_threads is per thread).
        self._executor = ThreadPoolExecutor(
            max_workers=self.threads,
            thread_name_prefix="facebridge-infer",
            initializer=thread_initializer,
        )
        self._pending = asyncio.Semaphore(max(1, int(max_pending)))

    async def run(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        if self._pending.locked():
            raise ServiceUnavailable(
                "too many requests in flight; retry shortly", extra={"retry_after_s": 1}
            )
        async with self._pending:
            ctx = contextvars.copy_context()
            call = functools.partial(ctx.run, functools.partial(fn, **kwargs))
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class VerifiedKeys:
    """Keys verified in the last ``ttl_seconds`` (by hash), so a hot route does not hit SQL
    (and write ``last_used_at``) on every request.

    A revocation through this worker clears the cache at once; other workers and replicas
    honour it within ``ttl_seconds``.
    """

    def __init__(self, *, ttl_seconds: float) -> None:
        self.ttl_seconds = float(ttl_seconds)
        self._entries: dict[str, tuple[ApiKeyInfo, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> ApiKeyInfo | None:
        with self._lock:
            entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, info: ApiKeyInfo) -> None:
        with self._lock:
            if len(self._entries) > 10_000:  # many distinct keys: start over, never grow
                self._entries.clear()
            self._entries[key_hash] = (info, time.monotonic() + self.ttl_seconds)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def state_or_unavailable(app: Any) -> ServiceState:
    """The state the background start-up built; 503 saying what is still loading (or why the
    start-up failed) until then."""
    state = getattr(app.state, "facebridge", None)
    if state is not None:
        return state
    startup = getattr(app.state, "facebridge_startup", None)
    if startup is not None and startup.error is not None:
        raise ServiceUnavailable(f"service failed to start: {startup.error}")
    if startup is not None and not startup.stopping:
        raise ServiceUnavailable(
            f"service is starting ({startup.describe()}); retry shortly",
            extra={"retry_after_s": 1},
        )
    raise ServiceUnavailable("service is starting or stopping")


@dataclass
class ServiceState:
    """Everything the lifespan builds; routes reach it through ``deps.StateDep``."""

    settings: ServiceSettings
    metrics: ServiceMetrics
    pool: InferencePool
    engine: Engine
    session_factory: sessionmaker[Session]
    backbone: OnnxBackbone | None
    holder: ActiveTransformerHolder
    gallery: GallerySync
    pipeline: Pipeline
    gallery_poller: Poller
    shadow: ShadowEvaluator
    verified_keys: VerifiedKeys = field(
        default_factory=lambda: VerifiedKeys(ttl_seconds=KEY_CACHE_SECONDS)
    )
    _count_mismatch_since: float | None = field(default=None, repr=False)

    @property
    def index(self) -> VectorStore:
        """The old model's vector store (read once per use: a rebuild may swap it)."""
        return self.gallery.primary

    def identity_vectors(self, identity_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, old-space vectors) of one identity; NotFound for an unknown one."""
        with self.session_factory() as session:
            return face_vectors(session=session, identity_id=identity_id)

    def readiness(self) -> dict[str, str]:
        """One line per check; a line starting with ``fail`` makes /readyz answer 503.

        O(1) in the gallery size: a ping, then SQL's face counter against the store's count
        (the id-set comparison runs in the background: ``GET /v1/gallery/stats``). A count
        mismatch is "syncing" for a few poll intervals (another worker's write reaches this
        store at the next poll) and fails only when it lasts.
        """
        checks: dict[str, str] = {}
        db_ok = database_reachable(engine=self.engine)
        checks["database"] = "ok" if db_ok else "fail: unreachable"
        checks["backbone"] = (
            self.backbone.model_id if self.backbone is not None else "fail: not configured"
        )
        checks["transformer"] = self._transformer_check()
        if not db_ok:
            checks["index"] = "fail: database unreachable"
            return checks
        try:
            with self.session_factory() as session:
                report = count_report(session=session, index=self.index)
        except (ContractError, ServiceUnavailable) as exc:
            checks["index"] = f"fail: {exc}"
            return checks
        checks["index"] = self._index_check(report.sql_count, report.index_count)
        return checks

    def _transformer_check(self) -> str:
        status = self.holder.status()
        served = status.served_version
        if status.expected_version is not None:
            retry = f"retry in {status.retry_in_seconds or 0:.0f} s"
            if served is None:
                return f"fail: {status.last_error} ({retry})"
            # Keep serving the previous version (availability), but say so loudly.
            return (
                f"degraded: serving {served} while the database says "
                f"{status.expected_version} is active: {status.last_error} ({retry})"
            )
        if served is not None:
            return served
        return "none active (identify answers 503 until one is activated)"

    def _index_check(self, sql_faces: int, vectors: int) -> str:
        self.metrics.gallery_sql_faces.set(sql_faces)
        if vectors == sql_faces:
            self._count_mismatch_since = None
            return f"ok: {vectors} vectors = {sql_faces} faces in SQL"
        now = time.monotonic()
        if self._count_mismatch_since is None:
            self._count_mismatch_since = now
        lasted = now - self._count_mismatch_since
        grace = max(MISMATCH_GRACE_S, 5 * self.settings.generation_poll_seconds)
        if lasted < grace:
            return f"ok: syncing (index {vectors} vectors, SQL {sql_faces} faces)"
        return (
            f"fail: index has {vectors} vectors, SQL {sql_faces} faces, for {lasted:.0f} s "
            "(details: GET /v1/gallery/stats)"
        )

    def refresh_gauges(self) -> None:
        """Gauges that cost nothing to read (no SQL): scraping /metrics stays cheap."""
        self.metrics.gallery_size.set(self.index.ntotal)
        for space, store in list(self.gallery.stores.items()):
            self.metrics.gallery_space_vectors.labels(space=space).set(store.ntotal)
        checked = self.gallery.last_check
        self.metrics.gallery_consistent.set(-1 if checked is None else int(checked.consistent))
        self.metrics.gallery_log_position.set(self.gallery.feed.watermark)
        self.metrics.set_active_transformer(self.holder.current().version)
        self.metrics.transformer_in_sync.set(1 if self.holder.status().in_sync else 0)
