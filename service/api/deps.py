"""FastAPI dependencies as ``Annotated`` aliases: the app state, settings, a DB session, auth.

Auth: header ``X-API-Key``. Scopes: ``identify`` (identify, verify, read identities and gallery
stats), ``enrol`` (create/change identities and faces, gallery import), ``admin`` (everything;
the only scope accepted under /v1/admin). Keys and scope rules live in :mod:`service.keys`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader

from service.errors import Forbidden, ServiceUnavailable, UnsupportedMediaType
from service.metrics import ServiceMetrics

T = TypeVar("T")

API_KEY_HEADER = "X-API-Key"
SCOPE_IDENTIFY, SCOPE_ENROL, SCOPE_ADMIN = "identify", "enrol", "admin"
api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="API key; scopes identify, enrol, admin.",
)


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
        self._entries: dict[str, tuple[Any, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Any | None:
        with self._lock:
            entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, info: Any) -> None:
        with self._lock:
            if len(self._entries) > 10_000:  # many distinct keys: start over, never grow
                self._entries.clear()
            self._entries[key_hash] = (info, time.monotonic() + self.ttl_seconds)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclass
class ServiceState:
    """Everything the lifespan builds; routes reach it through :data:`StateDep`."""

    settings: Any
    metrics: ServiceMetrics
    pool: InferencePool
    session_factory: Callable[[], Any]
    pipeline: Any
    backbone: Any
    holder: Any
    index: Any
    engine: Any = None
    verified_keys: VerifiedKeys = field(default_factory=lambda: VerifiedKeys(ttl_seconds=5.0))
    extras: dict[str, Any] = field(default_factory=dict)


def get_state(request: Request) -> ServiceState:
    state = getattr(request.app.state, "facebridge", None)
    if state is None:
        raise ServiceUnavailable("service is starting or stopping")
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_settings(state: StateDep) -> Any:
    return state.settings


SettingsDep = Annotated[Any, Depends(get_settings)]


def get_db(state: StateDep) -> Iterator[Any]:
    """One SQLAlchemy session per request (sync routes run in FastAPI's thread pool)."""
    session = state.session_factory()
    try:
        yield session
    finally:
        session.close()


DbSession = Annotated[Any, Depends(get_db)]


def require_scope(scope: str) -> Callable[..., Any]:
    """A dependency admitting keys with ``scope`` (401 without a known key, 403 without scope).

    Scope rules (admin implies all) live in :mod:`service.keys`; a cache miss verifies the key
    against SQL in a worker thread, off the event loop.
    """

    async def check(
        request: Request, key: Annotated[str | None, Security(api_key_header)] = None
    ) -> str:
        from service.keys import hash_key, verify_key

        state = get_state(request)
        cache: VerifiedKeys = state.verified_keys
        key_hash = hash_key(key) if key else ""
        info = cache.get(key_hash) if key else None
        if info is None:

            def verify() -> Any:
                with state.session_factory() as session:
                    return verify_key(session=session, key=key, scope=scope)

            info = await run_in_threadpool(verify)
            cache.put(key_hash, info)
        elif not info.allows(scope):
            raise Forbidden(f"this API key lacks the {scope!r} scope")
        return scope

    check.__name__ = f"require_{scope}"
    return check


IdentifyScope = Annotated[str, Depends(require_scope(SCOPE_IDENTIFY))]
EnrolScope = Annotated[str, Depends(require_scope(SCOPE_ENROL))]
AdminScope = Annotated[str, Depends(require_scope(SCOPE_ADMIN))]


def require_multipart(request: Request) -> None:
    """415 for a body that is not multipart/form-data (before the missing-field 422)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            f"expected multipart/form-data, got {content_type or 'no content type'!r}"
        )


MultipartBody = Annotated[None, Depends(require_multipart)]
