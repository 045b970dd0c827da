"""The one error model.

Domain code raises a ``FacebridgeError`` subclass; the API maps it to one problem+json body
(RFC 9457) and the CLI prints it as one line. Nothing else should build error responses.
"""

from __future__ import annotations

from typing import Any


class FacebridgeError(Exception):
    """Base of every error a caller can act on. ``status`` is the HTTP status it maps to."""

    status: int = 400
    code: str = "bad-request"
    title: str = "Bad request"

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = dict(extra or {})

    def problem(self, *, instance: str | None = None) -> dict[str, Any]:
        """The problem+json body for this error."""
        body: dict[str, Any] = {
            "type": f"https://facebridge.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def __str__(self) -> str:
        return self.detail


class InvalidInput(FacebridgeError):
    status, code, title = 422, "invalid-input", "Invalid input"


class ContractError(InvalidInput):
    """A file (pairs, transformer, manifest, gallery import) breaks its contract."""

    code, title = "contract-violation", "File does not follow its contract"


class ImageError(InvalidInput):
    """An uploaded image cannot be used (not an image, truncated, bomb, no face...)."""

    code, title = "invalid-image", "Unusable image"


class NoFaceFound(ImageError):
    code, title = "no-face", "No face found"


class PayloadTooLarge(FacebridgeError):
    status, code, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(FacebridgeError):
    status, code, title = 415, "unsupported-media-type", "Unsupported media type"


class NotFound(FacebridgeError):
    status, code, title = 404, "not-found", "Not found"


class Conflict(FacebridgeError):
    status, code, title = 409, "conflict", "Conflict"


class Unauthorized(FacebridgeError):
    status, code, title = 401, "unauthorized", "Missing or unknown API key"


class Forbidden(FacebridgeError):
    status, code, title = 403, "forbidden", "API key lacks the required scope"


class TooManyRequests(FacebridgeError):
    """Refused for a while (e.g. too many failed authentications from one address)."""

    status, code, title = 429, "too-many-requests", "Too many requests"


class ServiceUnavailable(FacebridgeError):
    status, code, title = 503, "unavailable", "Service not ready"
