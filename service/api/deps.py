"""FastAPI dependencies as ``Annotated`` aliases: the app state, settings, a DB session, auth.

Auth: header ``X-API-Key``. Scopes: ``identify`` (identify, verify, read identities and gallery
stats), ``enrol`` (create/change identities and faces, gallery import), ``admin`` (everything;
the only scope accepted under /v1/admin). Keys and scope rules live in :mod:`service.keys`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from service.api.auth import ANY_VALID_KEY, API_KEY_SCOPE_KEY, SCOPE_ATTRIBUTE, authenticate
from service.api.state import ServiceState, state_or_unavailable
from service.errors import Forbidden, UnsupportedMediaType
from service.keys import ApiKeyInfo
from service.registry.audit import Actor
from service.settings import ServiceSettings

API_KEY_HEADER = "X-API-Key"
SCOPE_IDENTIFY, SCOPE_ENROL, SCOPE_ADMIN = "identify", "enrol", "admin"
api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="API key; scopes identify, enrol, admin.",
)


def app_state(request: Request) -> ServiceState:
    """The state the lifespan built (503 while starting or stopping)."""
    return state_or_unavailable(request.app)


# Trivial dependencies are ``async`` on purpose: a plain ``def`` costs a thread hop per request.
async def get_state(request: Request) -> ServiceState:
    return app_state(request)


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_settings(state: StateDep) -> ServiceSettings:
    return state.settings


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]


def get_db(state: StateDep) -> Iterator[Session]:
    """One SQLAlchemy session per request (sync routes run in FastAPI's thread pool)."""
    session = state.session_factory()
    try:
        yield session
    finally:
        session.close()


DbSession = Annotated[Session, Depends(get_db)]


@functools.cache
def require_scope(scope: str | None) -> Callable[..., Any]:
    """A dependency admitting keys with ``scope`` (401 without a known key, 403 without scope);
    ``None`` admits any valid key. One callable per scope, so FastAPI runs it once per request
    even when a route and its router both depend on it.

    :class:`service.api.auth.AuthMiddleware` reads the scope from the returned callable and
    verifies the key before the body is read; this dependency then only re-checks the verified
    key it left in the request scope (or verifies the key itself, off the event loop, where the
    middleware is not installed). Scope rules (admin implies all) live in :mod:`service.keys`.
    The verified key's record is kept on ``request.state.api_key`` (who made a change:
    :func:`admin_actor`).
    """

    async def check(
        request: Request, key: Annotated[str | None, Security(api_key_header)] = None
    ) -> str:
        info: ApiKeyInfo | None = request.scope.get(API_KEY_SCOPE_KEY)
        if info is None:
            info = await run_in_threadpool(authenticate, app_state(request), key, [scope])
            request.scope[API_KEY_SCOPE_KEY] = info
        elif scope is not None and not info.allows(scope):
            raise Forbidden(f"this API key lacks the {scope!r} scope")
        request.state.api_key = info
        return scope or "any"

    check.__name__ = f"require_{scope or 'any_key'}"
    setattr(check, SCOPE_ATTRIBUTE, scope if scope is not None else ANY_VALID_KEY)
    return check


IdentifyScope = Annotated[str, Depends(require_scope(SCOPE_IDENTIFY))]
EnrolScope = Annotated[str, Depends(require_scope(SCOPE_ENROL))]
AdminScope = Annotated[str, Depends(require_scope(SCOPE_ADMIN))]
AnyKey = Annotated[str, Depends(require_scope(None))]


async def verified_key(request: Request, _auth: AnyKey) -> ApiKeyInfo:
    """The caller's key record (any valid key)."""
    return request.state.api_key  # type: ignore[no-any-return]


async def admin_actor(request: Request, _auth: AdminScope) -> Actor:
    """Who makes an admin change, for the audit history: the admin key's id and name."""
    info: ApiKeyInfo = request.state.api_key
    return Actor.for_key(key_id=info.id, name=info.name)


CallerKey = Annotated[ApiKeyInfo, Depends(verified_key)]
AdminActor = Annotated[Actor, Depends(admin_actor)]


async def require_multipart(request: Request) -> None:
    """415 for a body that is not multipart/form-data (before the missing-field 422)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            f"expected multipart/form-data, got {content_type or 'no content type'!r}"
        )


MultipartBody = Annotated[None, Depends(require_multipart)]
