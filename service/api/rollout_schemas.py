"""Bodies of the safe-rollout and console routes: audit history, shadow runs, the caller's key,
face detection for the console's "Try it" page. Each with an OpenAPI example."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.registry.audit import MAX_REASON_LENGTH


def _example(value: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [value]})


_AT = "2026-12-02T12:00:00Z"


class ChangeReason(BaseModel):
    """Why an operator makes a change; kept in the audit history."""

    model_config = _example({"reason": "shadow agreement 99.2% over 4,000 replies"})
    reason: str | None = Field(default=None, max_length=MAX_REASON_LENGTH)


class AuditEvent(BaseModel):
    model_config = _example(
        {
            "id": 12,
            "at": _AT,
            "action": "activate",
            "actor_key_id": 1,
            "actor": "key 1 (ops)",
            "subject": "t-3f2a9c0b1d4e",
            "from_value": "t-0b1d4e3f2a9c",
            "to_value": "t-3f2a9c0b1d4e",
            "reason": "shadow agreement 99.2% over 4,000 replies",
            "details": {"shadow": {"run_id": 3, "top1_agreement": 0.992}},
        }
    )
    id: int
    at: datetime
    action: str = Field(
        description="upload, activate, rollback, deactivate, delete, key-create, key-revoke, "
        "key-bootstrap, shadow-start, shadow-stop, capture-undo"
    )
    actor_key_id: int | None = Field(description="the API key that made the change (None: CLI)")
    actor: str
    subject: str | None
    from_value: str | None
    to_value: str | None
    reason: str | None
    details: dict[str, Any] = {}


class AuditPage(BaseModel):
    model_config = _example(
        {
            "items": [AuditEvent.model_config["json_schema_extra"]["examples"][0]],  # type: ignore[index]
            "total": 1,
            "limit": 50,
            "offset": 0,
        }
    )
    items: list[AuditEvent]
    total: int
    limit: int
    offset: int


class ShadowStart(BaseModel):
    model_config = _example({"sample_rate": 0.25, "reason": "candidate ridge-2026-12"})
    sample_rate: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="share of identify replies to compare; default FACEBRIDGE_SHADOW_SAMPLE_RATE",
    )
    reason: str | None = Field(default=None, max_length=MAX_REASON_LENGTH)


_RESULTS_EXAMPLE = {
    "requests": 812,
    "images": 812,
    "dropped": 0,
    "skipped": 0,
    "errors": 0,
    "top1_agreement": 0.9815,
    "top1_compared": 812,
    "decision_change_rate": 0.0234,
    "reply_change_rate": 0.0234,
    "decision_changes": {
        "total": 19,
        "match_to_no_match": 11,
        "no_match_to_match": 6,
        "match_to_other": 2,
    },
    "match_rate": {"active": 0.81, "candidate": 0.8},
    "scores": {
        "active": {"n": 812, "mean": 0.62, "quantiles": {"p50": 0.66}, "histogram": {}},
        "candidate": {"n": 812, "mean": 0.6, "quantiles": {"p50": 0.64}, "histogram": {}},
    },
}


class ShadowRun(BaseModel):
    model_config = _example(
        {
            "id": 3,
            "candidate": "t-3f2a9c0b1d4e",
            "baseline": "t-0b1d4e3f2a9c",
            "sample_rate": 0.25,
            "status": "running",
            "running": True,
            "started_at": _AT,
            "started_by_key_id": 1,
            "stopped_at": None,
            "stop_reason": None,
            "workers": 2,
            "results": _RESULTS_EXAMPLE,
            "fpir": {"value": None, "available": False, "gallery_faces": 1431},
        }
    )
    id: int
    candidate: str
    baseline: str = Field(description="the active version the candidate is compared with")
    sample_rate: float
    status: str
    running: bool
    started_at: datetime
    started_by_key_id: int | None
    stopped_at: datetime | None
    stop_reason: str | None
    workers: int = Field(description="workers that have reported results")
    results: dict[str, Any] = Field(
        description="top-1 agreement, decision changes, score distributions (all workers summed)"
    )
    fpir: dict[str, Any] = Field(
        description="the candidate's estimated FPIR at the current gallery size"
    )


class ShadowOverview(BaseModel):
    model_config = _example(
        {
            "current": ShadowRun.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
            "runs": [],
        }
    )
    current: ShadowRun | None
    runs: list[ShadowRun] = Field(description="the latest runs, newest first")


class WhoAmI(BaseModel):
    model_config = _example(
        {"id": 3, "name": "kiosk-3", "prefix": "fb_3k9x", "scopes": ["identify"], "admin": False}
    )
    id: int
    name: str | None
    prefix: str
    scopes: list[str]
    admin: bool


class DetectedFace(BaseModel):
    model_config = _example(
        {
            "box": [61.0, 70.0, 190.0, 199.0],
            "score": 1.2,
            "crop": "data:image/png;base64,iVBORw0KGgo...",
            "used_by_identify": True,
        }
    )
    box: list[float] | None = Field(description="x0, y0, x1, y1 in image pixels (None: a crop)")
    score: float | None
    crop: str = Field(description="the aligned 112x112 crop the backbone sees, as a PNG data URL")
    used_by_identify: bool


class DetectResponse(BaseModel):
    model_config = _example(
        {
            "width": 250,
            "height": 250,
            "aligned_input": False,
            "faces": [DetectedFace.model_config["json_schema_extra"]["examples"][0]],  # type: ignore[index]
        }
    )
    width: int
    height: int
    aligned_input: bool = Field(description="the image was taken as an aligned crop as is")
    faces: list[DetectedFace]
