"""Bodies of the transformer registry, API key and health routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from service.api.schemas.common import Scope, example_config


class TransformerInfo(BaseModel):
    model_config = example_config(
        {
            "version": "tf-20260101-ab12cd34",
            "sha256": "ab12cd34" + "0" * 56,
            "input_dim": 128,
            "output_dim": 128,
            "source_model": "mobilefacenet-128",
            "target_model": "dlib-resnet-v1",
            "recipe": "ridge",
            "threshold": 0.5,
            "fusion_weight": 0.9,
            "two_way": True,
            "metrics": {"top1": 92.1},
            "active": True,
            "created_at": "2026-01-01T12:00:00Z",
            "uploaded_at": "2026-01-01T12:05:00Z",
            "activated_at": "2026-01-01T12:06:00Z",
        }
    )
    version: str
    sha256: str
    input_dim: int
    output_dim: int
    source_model: str
    target_model: str
    recipe: str
    threshold: float | None = None
    fusion_weight: float = Field(
        default=1.0,
        description="weight of the old-space score in the fused score; 1 = forward map only",
    )
    two_way: bool = Field(
        default=False,
        description="the file carries the backward map too (fusion_weight < 1): identify and "
        "verify report fused scores",
    )
    metrics: dict[str, Any] = {}
    active: bool
    created_at: str | None = None
    uploaded_at: datetime | None = None
    activated_at: datetime | None = None


class TransformerList(BaseModel):
    model_config = example_config(
        {
            "items": [TransformerInfo.model_config["json_schema_extra"]["examples"][0]],  # type: ignore[index]
            "active": "tf-20260101-ab12cd34",
            "rollback_target": "tf-20251201-0f9e8d7c",
        }
    )
    items: list[TransformerInfo]
    active: str | None
    rollback_target: str | None = Field(
        default=None,
        description="what POST .../rollback would re-activate (the activation history is a "
        "stack); None: nothing older",
    )


class ApiKeyCreate(BaseModel):
    model_config = example_config({"name": "kiosk-3", "scopes": ["identify"]})
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(min_length=1)
    reason: str | None = Field(
        default=None, max_length=2000, description="why (kept in the audit history)"
    )


class ApiKeyInfo(BaseModel):
    model_config = example_config(
        {
            "id": 3,
            "name": "kiosk-3",
            "scopes": ["identify"],
            "prefix": "fb_3k9x",
            "created_at": "2026-01-01T12:00:00Z",
            "revoked": False,
        }
    )
    id: int
    name: str
    scopes: list[str]
    prefix: str | None = None
    created_at: datetime | None = None
    revoked: bool = False


class ApiKeyCreated(ApiKeyInfo):
    model_config = example_config(
        {
            "id": 3,
            "name": "kiosk-3",
            "scopes": ["identify"],
            "prefix": "fb_3k9x",
            "created_at": "2026-01-01T12:00:00Z",
            "revoked": False,
            "key": "fb_3k9x...the whole secret, shown once",
        }
    )
    key: str = Field(description="the secret; shown once, stored only as a hash")


class ApiKeyList(BaseModel):
    model_config = example_config(
        {"items": [ApiKeyInfo.model_config["json_schema_extra"]["examples"][0]]}  # type: ignore[index]
    )
    items: list[ApiKeyInfo]


class Health(BaseModel):
    model_config = example_config({"status": "ok"})
    status: str = Field(description="ok (serving), starting (still loading) or failed")
    detail: str | None = Field(
        default=None, description="what the start-up is doing, or why it failed"
    )


class Readiness(BaseModel):
    model_config = example_config(
        {
            "status": "ready",
            "checks": {
                "database": "ok",
                "backbone": "mobilefacenet-128",
                "transformer": "t-3f2a9c0b1d4e",
                "index": "ok: 1431 vectors = 1431 faces in SQL",
            },
            "ready": True,
        }
    )
    status: str
    ready: bool
    checks: dict[str, str]


# The largest id/offset the databases hold (64-bit signed): larger values are refused with 422
# in the schema rather than overflowing in the driver (a 500).
