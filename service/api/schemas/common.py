"""What every route shares: the problem+json model and its OpenAPI entries, id limits and
the example helper."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Scope = Literal["identify", "enrol", "admin"]


def example_config(value: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [value]}, from_attributes=True)


class Problem(BaseModel):
    """Every error (RFC 9457 problem+json)."""

    model_config = example_config(
        {
            "type": "https://facebridge.dev/problems/no-face",
            "title": "No face found",
            "status": 422,
            "detail": "image 0: no face found by the dlib detector",
            "code": "no-face",
            "instance": "/v1/identify",
            "request_id": "5f0c1e0b9d0a4b7e8f1e2d3c4b5a6978",
        }
    )
    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    request_id: str | None = None


MAX_DB_INT = 2**63 - 1
# Enrolment's file parts are never empty (one transaction: an empty part is a 422). Identify
# answers an empty part in a batch with that image's own error (200), so it does not say it.
NON_EMPTY_PARTS = {
    "items": {"type": "string", "contentMediaType": "application/octet-stream", "minLength": 1}
}

_PROBLEM_TITLES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Missing or unknown API key"),
    403: ("forbidden", "API key lacks the required scope"),
    404: ("not-found", "Not found"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("invalid-input", "Invalid input"),
    429: ("too-many-requests", "Too many requests"),
    503: ("unavailable", "Service not ready"),
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the problem+json errors a route can answer."""
    out: dict[int | str, dict[str, Any]] = {}
    # Every route can answer these: a body that cannot be parsed, no/unknown key, invalid
    # input, too many failed authentications from the address, the service still starting.
    for status in sorted({400, 401, 422, 429, 503, *statuses}):
        code, title = _PROBLEM_TITLES[status]
        example = {
            "type": f"https://facebridge.dev/problems/{code}",
            "title": title,
            "status": status,
            "detail": title,
            "code": code,
            "request_id": "5f0c1e0b9d0a4b7e8f1e2d3c4b5a6978",
        }
        out[status] = {
            "model": Problem,
            "description": title,
            "content": {"application/problem+json": {"example": example}},
        }
    return out
