"""GET /v1/migration (status) and POST /v1/admin/captures/undo (remove captured vectors)."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Response
from pydantic import BaseModel, Field

from service.api.deps import AdminActor, DbSession, IdentifyScope, StateDep
from service.api.schemas import MAX_DB_INT, example_config, problem_responses
from service.migration.captures import undo_captures
from service.migration.export import export_capture_pairs
from service.migration.status import migration_status
from service.registry.audit import MAX_REASON_LENGTH

router = APIRouter(prefix="/v1", tags=["migration"])


class SpaceStatus(BaseModel):
    space: str = Field(description="model id of the space")
    kind: str = Field(description="old (legacy + mapped vectors) or native (a backbone's own)")
    faces: int
    identities: int


class MigrationStatusResponse(BaseModel):
    model_config = example_config(
        {
            "identities": 1431,
            "faces": 2885,
            "spaces": [
                {"space": "dlib-resnet-v1", "kind": "old", "faces": 1431, "identities": 1431},
                {"space": "mobilefacenet-128", "kind": "native", "faces": 698, "identities": 327},
            ],
            "coverage": 0.2285,
            "identities_with_native": 327,
            "captures_total": 698,
            "captures_per_day": [{"date": "2026-12-02", "captures": 698}],
            "undo_history": [
                {"at": "2026-12-02T10:00:00+00:00", "actor": "key 1 (ops)", "faces_removed": 3}
            ],
            "capture": "confident",
        }
    )
    identities: int
    faces: int
    spaces: list[SpaceStatus]
    coverage: float = Field(description="identities with >= 1 native vector / with faces")
    identities_with_native: int
    captures_total: int = Field(description="captured vectors held now")
    captures_per_day: list[dict[str, Any]] = Field(
        description="plot-ready series, oldest first: {date (UTC), captures}, 30 days"
    )
    undo_history: list[dict[str, Any]] = Field(description="newest first")
    capture: str = Field(description="FACEBRIDGE_CAPTURE of this worker")


class UndoRequest(BaseModel):
    model_config = example_config(
        {"since": "2026-12-01T00:00:00Z", "transformer_version": "t-3f2a9c0b1d4e", "reason": "bad"}
    )
    identity_id: int | None = Field(default=None, ge=1, le=MAX_DB_INT)
    since: datetime | None = Field(default=None, description="captures at or after (ISO 8601)")
    until: datetime | None = Field(default=None, description="captures before (ISO 8601)")
    transformer_version: str | None = Field(default=None, max_length=64)
    reason: str | None = Field(default=None, max_length=MAX_REASON_LENGTH)


class UndoResponse(BaseModel):
    model_config = example_config({"faces_removed": 2, "face_ids": [5012, 5020]})
    faces_removed: int
    face_ids: list[int]


@router.get(
    "/migration",
    operation_id="migrationStatus",
    summary="Progressive migration: spaces, coverage, captures per day, undo history",
    response_model=MigrationStatusResponse,
    responses=problem_responses(403),
)
def get_migration(state: StateDep, session: DbSession, _auth: IdentifyScope) -> Any:
    status = migration_status(session, old_space=state.gallery.primary_space)
    state.metrics.migration_coverage.set(status.coverage)
    return MigrationStatusResponse(**status.to_dict(), capture=state.settings.capture)


@router.post(
    "/admin/captures/undo",
    operation_id="undoCaptures",
    summary="Remove captured vectors of one identity and/or of a time window",
    response_model=UndoResponse,
    responses=problem_responses(403, 422),
)
def post_undo(
    state: StateDep,
    session: DbSession,
    actor: AdminActor,
    body: Annotated[UndoRequest, Body()],
) -> UndoResponse:
    """Deletes every captured vector matching all the filters given (at least one), recorded
    in the audit history; search results are then those before the captures."""
    removed = undo_captures(
        session,
        actor=actor,
        identity_id=body.identity_id,
        since=body.since,
        until=body.until,
        transformer_version=body.transformer_version,
        reason=body.reason,
    )
    state.gallery.refresh()
    return UndoResponse(faces_removed=len(removed), face_ids=removed)


@router.get(
    "/admin/captures/pairs",
    operation_id="exportCapturePairs",
    summary="Every capture as a bridge pair (a pairs .npz file) for refitting",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {"example": "(binary .npz)"}},
            "description": "pairs file",
        },
        **problem_responses(403, 422),
    },
)
def get_capture_pairs(session: DbSession, _actor: AdminActor) -> Response:
    """The same file as `facebridge migration export-pairs` (service.migration.export)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "captures.npz"
        export_capture_pairs(session, out=path)
        data = path.read_bytes()
    return Response(
        content=data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": 'attachment; filename="captures.npz"'},
    )
