"""POST /v1/gallery/import (bulk legacy vectors) and GET /v1/gallery/stats."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from service.api.deps import DbSession, EnrolScope, IdentifyScope, MultipartBody, StateDep
from service.api.schemas import GalleryImportResponse, GalleryStats, problem_responses
from service.api.uploads import check_media_type
from service.errors import InvalidInput

router = APIRouter(prefix="/v1/gallery", tags=["gallery"])

IMPORT_MEDIA_TYPES = frozenset(
    {
        "application/zip",
        "application/x-npz",
        "application/x-zip-compressed",
        "application/vnd.apache.parquet",
        "application/x-parquet",
        "text/csv",
        "application/csv",
    }
)


def _as_dict(value: Any) -> dict[str, Any]:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return dict(vars(value))


@router.post(
    "/import",
    operation_id="importGallery",
    summary="Import legacy (old-model) gallery vectors",
    response_model=GalleryImportResponse,
    responses=problem_responses(403, 413, 415, 422),
)
async def import_gallery(
    state: StateDep,
    _auth: EnrolScope,
    _multipart: MultipartBody,
    file: Annotated[
        UploadFile,
        File(
            description="`.npz` with `old` [N, d] + `name` and/or `external_id`; or Parquet/CSV "
            "with `external_id`, `name` and `v0..v{d-1}` (or a `vector` list column)"
        ),
    ],
    format: Annotated[
        str | None, Form(description="npz | parquet | csv; default: from the file name")
    ] = None,
    model_id: Annotated[
        str | None, Form(description="id of the old model that made the vectors")
    ] = None,
) -> GalleryImportResponse:
    """Idempotent per external id (re-importing the same file adds nothing). The upload streams
    to a temporary file (never held in memory whole); one transaction: a malformed file stores
    nothing."""
    from service.gallery.importer import import_gallery as run_import
    from service.gallery.store import save_gallery

    check_media_type(file, allowed=IMPORT_MEDIA_TYPES, what="gallery file")
    if format is not None and format not in ("npz", "parquet", "csv"):
        raise InvalidInput(f"format must be npz, parquet or csv, got {format!r}")
    size = file.size if file.size is not None else 0
    if size == 0:
        raise InvalidInput("empty file: the upload has no bytes")

    def run() -> Any:
        file.file.seek(0)
        report = run_import(
            session_factory=state.session_factory,
            index=state.index,
            source=file.file,
            format=format,  # type: ignore[arg-type]
            filename=file.filename,
            model_id=model_id,
        )
        save_gallery(index=state.index, settings=state.settings)
        return report

    report = await state.pool.run(run)
    data = _as_dict(report)
    return GalleryImportResponse(
        rows=int(data.pop("rows", 0)),
        identities_created=int(data.pop("identities_created", 0)),
        identities_updated=int(data.pop("identities_matched", data.pop("identities_updated", 0))),
        faces_added=int(data.pop("faces_added", 0)),
        details={k: v for k, v in data.items() if isinstance(v, int | float | str | bool)},
    )


@router.get(
    "/stats",
    operation_id="galleryStats",
    summary="Gallery size and index consistency",
    response_model=GalleryStats,
    responses=problem_responses(403),
)
def gallery_stats(state: StateDep, session: DbSession, _auth: IdentifyScope) -> GalleryStats:
    from service.gallery.store import check_consistency, gallery_stats

    stats = _as_dict(gallery_stats(session=session, index=state.index))
    report = check_consistency(session=session, index=state.index)
    return GalleryStats(
        identities=int(stats.pop("identities", 0)),
        faces=int(stats.pop("faces", 0)),
        index_vectors=int(stats.pop("index_ntotal", state.index.ntotal)),
        dim=stats.pop("dim", None),
        consistent=bool(report.consistent),
        faces_by_source=dict(stats.pop("by_source", {}) or {}),
        details={
            **{k: v for k, v in stats.items() if isinstance(v, int | float | str | bool)},
            "consistency": report.detail,
        },
    )
