"""The registry's view of stored transformer versions: the record it returns, the facts an
upload must fit, and the read-only queries. See :mod:`service.registry` for how the names of one
transformer (row, record, schema, runtime snapshot, runner) relate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import STATE_ACTIVE, TransformerVersion
from service.errors import NotFound

if TYPE_CHECKING:
    from service.settings import ServiceSettings

VERSION_PREFIX = "t-"


@dataclass(frozen=True)
class StoredTransformer:
    """One stored version as the registry returns it: its row's facts, where its file is, and
    whether this call created it (``created=False``: the same bytes were already stored)."""

    version: str
    sha256: str
    file: Path
    size_bytes: int
    input_dim: int
    output_dim: int
    source_model: str
    target_model: str
    recipe: str
    threshold: float | None
    metrics: dict[str, Any]
    state: str
    activated_at: datetime | None
    created_at: datetime
    note: str | None = None
    created: bool = True
    fusion_weight: float = 1.0

    @property
    def active(self) -> bool:
        return self.state == STATE_ACTIVE

    @property
    def two_way(self) -> bool:
        """A two-way file (backward map too): identify and verify use fused scores."""
        return self.fusion_weight < 1.0

    @classmethod
    def from_row(
        cls, row: TransformerVersion, *, directory: Path, created: bool = True
    ) -> StoredTransformer:
        return cls(
            version=row.version,
            sha256=row.sha256,
            file=directory / row.file_name,
            size_bytes=int(row.size_bytes),
            input_dim=int(row.input_dim),
            output_dim=int(row.output_dim),
            source_model=row.source_model,
            target_model=row.target_model,
            recipe=row.recipe,
            threshold=row.threshold,
            metrics=dict(row.metrics or {}),
            state=row.state,
            activated_at=row.activated_at,
            created_at=row.created_at,
            note=row.note,
            created=created,
            fusion_weight=float(row.fusion_weight),
        )


@dataclass(frozen=True)
class BackboneFacts:
    """What an uploaded transformer must fit on the input side."""

    model_id: str | None
    output_dim: int | None
    extra: dict[str, Any] = field(default_factory=dict)


def json_safe(value: Any) -> Any:
    """Metrics as strict JSON (Postgres refuses NaN/inf): non-finite numbers become None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


def version_for(sha256: str) -> str:
    return f"{VERSION_PREFIX}{sha256[:12]}"


def backbone_facts(settings: ServiceSettings) -> BackboneFacts:
    """Model id and output dim of the configured backbone (manifest only; no ONNX session)."""
    if settings.backbone_manifest is None:
        return BackboneFacts(model_id=None, output_dim=None)
    from service.contracts import load_backbone_manifest

    manifest, _ = load_backbone_manifest(settings.backbone_manifest)
    return BackboneFacts(model_id=manifest.model_id, output_dim=manifest.output_dim)


def backbone_facts_of(backbone: Any) -> BackboneFacts | None:
    """Model id and output dim of a LOADED backbone (None when there is none)."""
    if backbone is None:
        return None
    return BackboneFacts(model_id=backbone.model_id, output_dim=int(backbone.output_dim))


def version_row(session: Session, version: str) -> TransformerVersion:
    row = session.scalars(
        select(TransformerVersion).where(TransformerVersion.version == version)
    ).first()
    if row is None:
        raise NotFound(f"transformer version {version!r} not found")
    return row


def list_transformers(*, session: Session, settings: ServiceSettings) -> list[StoredTransformer]:
    rows = session.scalars(select(TransformerVersion).order_by(TransformerVersion.id)).all()
    return [StoredTransformer.from_row(r, directory=settings.transformers_path) for r in rows]


def get_transformer(
    *, session: Session, settings: ServiceSettings, version: str
) -> StoredTransformer:
    return StoredTransformer.from_row(
        version_row(session, version), directory=settings.transformers_path
    )
