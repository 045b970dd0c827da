"""Authentication from the headers, before any body is read (pure ASGI), and the limit on
failed attempts per client address.

:class:`AuthMiddleware` finds the route a request is for, reads the scopes its dependencies
require (``deps.require_scope`` tags them), and verifies ``X-API-Key`` BEFORE the app sees the
request: a request without a valid key is answered 401 (403 without the scope, 429 when its
address failed too often, 503 while the service starts) without a byte of its body being read,
so a 1 GiB upload without a key costs nothing. The verified key travels in the ASGI scope; the
route dependencies still check it (defence in depth, and the same rules where the middleware
is not installed).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.state import ServiceState, state_or_unavailable
from service.errors import FacebridgeError, Forbidden, TooManyRequests, Unauthorized
from service.keys import ApiKeyInfo, hash_key, verify_key

API_KEY_SCOPE_KEY = "facebridge.api_key"  # the verified ApiKeyInfo, in the ASGI scope
SCOPE_ATTRIBUTE = "facebridge_scope"  # set on the callables deps.require_scope returns
ANY_VALID_KEY = "*"  # the SCOPE_ATTRIBUTE of a route that admits any valid key
MAX_TRACKED_ADDRESSES = 10_000


class FailedAuthLimiter:
    """Counts failed authentications per client address in fixed windows.

    ``limit`` failures within ``window_seconds`` block the address until the window ends;
    ``limit == 0`` never blocks. Memory is bounded: past ``MAX_TRACKED_ADDRESSES`` addresses
    the windows that have ended are dropped (all of them if none has).
    """

    def __init__(self, *, limit: int, window_seconds: float) -> None:
        self.limit = int(limit)
        self.window_seconds = float(window_seconds)
        self._windows: dict[str, tuple[float, int]] = {}  # address -> (window start, failures)
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it is not blocked."""
        if self.limit <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            start, failures = self._windows.get(address, (now, 0))
        remaining = start + self.window_seconds - now
        if failures >= self.limit and remaining > 0:
            return remaining
        return None

    def failed(self, address: str) -> None:
        if self.limit <= 0:
            return
        now = time.monotonic()
        with self._lock:
            start, failures = self._windows.get(address, (now, 0))
            if now - start >= self.window_seconds:
                start, failures = now, 0
            if len(self._windows) >= MAX_TRACKED_ADDRESSES and address not in self._windows:
                self._forget_ended(now)
            self._windows[address] = (start, failures + 1)

    def _forget_ended(self, now: float) -> None:
        ended = [a for a, (s, _) in self._windows.items() if now - s >= self.window_seconds]
        for address in ended or list(self._windows):
            del self._windows[address]


def authenticate(state: ServiceState, key: str | None, scopes: Iterable[str | None]) -> ApiKeyInfo:
    """The key's record when it allows every scope in ``scopes`` (None or
    :data:`ANY_VALID_KEY`: any valid key; blocking: SQL on a cache miss). Unauthorized /
    Forbidden otherwise. THE check, for the middleware and the dependencies alike."""
    wanted = _wanted(scopes)
    key_hash = hash_key(key) if key else ""
    info = state.verified_keys.get(key_hash) if key else None
    if info is None:
        with state.session_factory() as session:
            info = verify_key(session=session, key=key, scope=wanted[0] if wanted else None)
        state.verified_keys.put(key_hash, info)
    return authorize(info, wanted)


def _wanted(scopes: Iterable[str | None]) -> list[str]:
    return sorted({s for s in scopes if s is not None and s != ANY_VALID_KEY})


def authorize(info: ApiKeyInfo, scopes: Iterable[str | None]) -> ApiKeyInfo:
    """``info`` (a key verified within the cache's TTL) when it allows every scope; Forbidden
    otherwise. Non-blocking: the event loop calls it on a cache hit."""
    for scope in _wanted(scopes):
        if not info.allows(scope):
            raise Forbidden(f"this API key lacks the {scope!r} scope")
    return info


def route_scopes(route: APIRoute) -> frozenset[str]:
    """Scopes the route's dependencies require (router-level ones included)."""
    found: set[str] = set()
    pending = list(route.dependant.dependencies)
    while pending:
        dependant = pending.pop()
        scope = getattr(dependant.call, SCOPE_ATTRIBUTE, None)
        if scope is not None:
            found.add(str(scope))
        pending.extend(dependant.dependencies)
    return frozenset(found)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    return _header(scope, b"transfer-encoding") is not None or (length not in (None, "", "0"))


_ScopedRoute = tuple[re.Pattern[str], frozenset[str], frozenset[str]]


class AuthMiddleware:
    """Verifies the API key of requests to scoped routes before the app reads their body."""

    def __init__(self, app: ASGIApp, *, limiter: FailedAuthLimiter) -> None:
        self.app = app
        self.limiter = limiter
        self._table: list[_ScopedRoute] | None = None

    def _routes(self, application: Any) -> list[_ScopedRoute]:
        """(path regex, methods, scopes) of every scoped route, built once."""
        if self._table is None:
            table = []
            for context in iter_route_contexts(getattr(application, "routes", [])):
                route = context.original_route
                if isinstance(route, APIRoute) and context.path and route_scopes(route):
                    regex, _, _ = compile_path(context.path)
                    table.append((regex, frozenset(route.methods), route_scopes(route)))
            self._table = table
        return self._table

    def _required(self, scope: Scope) -> frozenset[str]:
        path, method = scope.get("path", ""), scope.get("method", "GET")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        for regex, methods, scopes in self._routes(scope.get("app")):
            if method in methods and regex.match(path):
                return scopes
        return frozenset()  # unscoped, unknown route or wrong method: the router answers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        required = self._required(scope)
        if not required:
            await self.app(scope, receive, send)
            return
        try:
            scope[API_KEY_SCOPE_KEY] = await self._verify(scope, required)
        except FacebridgeError as exc:
            await self._refuse(scope, receive, send, exc)
            return
        await self.app(scope, receive, send)

    async def _verify(self, scope: Scope, required: frozenset[str]) -> ApiKeyInfo:
        state = state_or_unavailable(scope.get("app"))
        key = _header(scope, b"x-api-key")
        address = (scope.get("client") or ("unknown", 0))[0]
        cached = state.verified_keys.get(hash_key(key)) if key else None
        if cached is not None:  # verified within the cache's TTL: no SQL, no thread hop
            return authorize(cached, required)
        wait = self.limiter.retry_after(address)
        if wait is not None:
            raise TooManyRequests(
                f"too many failed authentications from {address}; retry in {math.ceil(wait)} s",
                extra={"retry_after_s": math.ceil(wait)},
            )
        try:
            return await run_in_threadpool(authenticate, state, key, required)
        except Unauthorized:
            self.limiter.failed(address)
            raise

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: FacebridgeError) -> None:
        from service.api.problems import problem_response

        headers: dict[str, Any] = {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = "ApiKey"
        if "retry_after_s" in exc.extra:
            headers["Retry-After"] = str(exc.extra["retry_after_s"])
        if _has_body(scope):
            headers["Connection"] = "close"  # the unread body must not be taken as a request
        response = problem_response(exc.problem(instance=scope.get("path")), headers=headers)
        await response(scope, receive, send)
