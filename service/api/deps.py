"""FastAPI dependencies as ``Annotated`` aliases: the app state, settings, a DB session, auth.

Auth: header ``X-API-Key``. Scopes: ``identify`` (identify, verify, read identities and gallery
stats), ``enrol`` (create/change identities and faces, gallery import), ``admin`` (everything;
the only scope accepted under /v1/admin). Keys and scope rules live in :mod:`service.keys`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.errors import ServiceUnavailable, UnsupportedMediaType
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

    def __init__(self, *, threads: int, max_pending: int) -> None:
        self.threads = max(1, int(threads))
        self._executor = ThreadPoolExecutor(
            max_workers=self.threads, thread_name_prefix="facebridge-infer"
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


def require_scope(scope: str) -> Callable[..., str]:
    """A dependency admitting keys with ``scope`` (401 without a known key, 403 without scope).

    A plain function: FastAPI runs it in its thread pool, so the key lookup (SQL) stays off
    the event loop. Scope rules (admin implies all) live in :mod:`service.keys`.
    """

    def check(request: Request, key: Annotated[str | None, Security(api_key_header)] = None) -> str:
        from service.keys import verify_key

        state = get_state(request)
        with state.session_factory() as session:
            verify_key(session=session, key=key, scope=scope)
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
