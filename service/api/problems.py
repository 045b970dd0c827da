"""One error body for everything: RFC 9457 problem+json.

Domain code raises :class:`~service.errors.FacebridgeError` subclasses;
:func:`install_problem_handlers` registers THE handler that turns them into
``application/problem+json``, plus handlers that give request validation errors (422),
Starlette/FastAPI ``HTTPException`` (404 route, 405 ...) and any unexpected exception (500,
traceback logged, never sent) the same shape. Every body carries ``type``, ``title``,
``status``, ``detail``, ``code`` and the request id.

The request id lives in a context variable, set by :class:`RequestContextMiddleware` from the
``X-Request-ID`` header (when it is sane) or a fresh uuid, and echoed in the response header.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import FacebridgeError, PayloadTooLarge

log = logging.getLogger("facebridge.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://facebridge.dev/problems/"
REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

request_id_var: ContextVar[str] = ContextVar("facebridge_request_id", default="-")

# Codes for HTTP errors raised by the framework itself (unknown route, wrong method, ...).
_HTTP_CODES = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "invalid-input",
    429: "too-many-requests",
    500: "internal-error",
    503: "unavailable",
}


def current_request_id() -> str:
    """The id of the request being served (``-`` outside a request)."""
    return request_id_var.get()


def problem_body(
    *, status: int, code: str, title: str, detail: str, instance: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A problem+json body for errors that are not :class:`FacebridgeError` instances."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return body


def problem_response(
    body: dict[str, Any], *, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {**body, "request_id": current_request_id()}
    return JSONResponse(
        body, status_code=int(body["status"]), media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def _facebridge_error_response(request: Request, exc: FacebridgeError) -> JSONResponse:
    if exc.status >= 500:
        log.error("request %s failed: %s: %s", current_request_id(), type(exc).__name__, exc)
    headers = {"WWW-Authenticate": "ApiKey"} if exc.status == 401 else {}
    if "retry_after_s" in exc.extra:  # 429, 503 while starting or saturated
        headers["Retry-After"] = str(exc.extra["retry_after_s"])
    return problem_response(exc.problem(instance=request.url.path), headers=headers or None)


async def _handle_facebridge_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FacebridgeError)
    return _facebridge_error_response(request, exc)


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"])
    body = problem_body(
        status=422,
        code="invalid-input",
        title="Invalid input",
        detail=f"{where}: {first['msg']}" if where else str(first["msg"]),
        instance=request.url.path,
        errors=errors,
    )
    return problem_response(body)


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = int(exc.status_code)
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "HTTP error"
    detail = exc.detail if isinstance(exc.detail, str) else title
    body = problem_body(
        status=status,
        code=_HTTP_CODES.get(status, f"http-{status}"),
        title=title,
        detail=detail,
        instance=request.url.path,
    )
    headers = dict(exc.headers or {})
    if status == 405:
        # The router names only the first route that matched the path; list them all.
        headers["Allow"] = ", ".join(allowed_methods(request.app, request.url.path))
    return problem_response(body, headers=headers or None)


def allowed_methods(app: Any, path: str) -> list[str]:
    """The methods of the resource ``path`` is: every route with the most specific path
    template matching it (a literal ``/transformers/rollback`` before ``/{version}``)."""
    by_template: dict[str, set[str]] = {}
    for context in iter_route_contexts(app.routes):
        template = context.path
        if template and compile_path(template)[0].match(path):
            methods = set(getattr(context.original_route, "methods", None) or ())
            by_template.setdefault(template, set()).update(methods)
    if not by_template:
        return []
    best = min(by_template, key=lambda template: template.count("{"))
    return sorted(by_template[best])


def _internal_error(path: str | None, exc: BaseException) -> JSONResponse:
    # The traceback goes to the log, never to the client.
    log.error("request %s: unhandled %s", current_request_id(), type(exc).__name__, exc_info=exc)
    body = problem_body(
        status=500,
        code="internal-error",
        title="Internal server error",
        detail=f"unexpected error; quote request id {current_request_id()} when reporting it",
        instance=path,
    )
    return problem_response(body)


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    return _internal_error(request.url.path, exc)


def install_problem_handlers(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app`` (the only place errors become bodies)."""
    app.add_exception_handler(FacebridgeError, _handle_facebridge_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(Exception, _handle_unexpected)


class RequestContextMiddleware:
    """Sets the request id context variable and echoes it as ``X-Request-ID`` (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if _SANE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send_with_id(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            # Unhandled errors surface here, inside the request id's context, so the 500
            # problem carries the id (Starlette's outer error middleware would not).
            if started:
                raise
            response = _internal_error(scope.get("path"), exc)
            await response(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """Refuses request bodies over a per-route limit with 413, without reading them whole.

    ``limit_for(path)`` gives the byte limit (None = unlimited). A declared ``Content-Length``
    over the limit is refused before a byte is read; a chunked body is counted while it streams
    and the request is cut off (413) as soon as it passes the limit, whatever the app was doing.
    """

    def __init__(self, app: ASGIApp, *, limit_for: Any) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit: int | None = self.limit_for(scope.get("path", ""))
        if limit is None:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await self._send_413(scope, send, limit, started=False)
                    return
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                # Whatever the app made of the interrupted body, the answer is 413.
                if not started:
                    started = True
                    await self._send_413(scope, send, limit, started=False)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except PayloadTooLarge:
            if not started:
                await self._send_413(scope, send, limit, started=False)

    @staticmethod
    async def _send_413(scope: Scope, send: Send, limit: int, *, started: bool) -> None:
        if started:
            return
        response = problem_response(
            PayloadTooLarge(f"request body exceeds the limit of {limit} bytes").problem(
                instance=scope.get("path")
            ),
            headers={"Connection": "close"},
        )
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - JSONResponse never reads the request
    return {"type": "http.disconnect"}
