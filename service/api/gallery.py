"""POST /v1/gallery/import (bulk legacy vectors) and GET /v1/gallery/stats."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile

from service.api.deps import DbSession, EnrolScope, IdentifyScope, MultipartBody, StateDep
from service.api.schemas import GalleryImportResponse, GalleryStats, problem_responses
from service.api.uploads import check_media_type
from service.errors import InvalidInput
from service.gallery import store as store_module
from service.gallery.importer import ImportReport
from service.gallery.importer import import_gallery as run_import

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
            "with `external_id`, `name` and `v0..v{d-1}` (or a `vector` list column)",
            json_schema_extra={"minLength": 1},
        ),
    ],
    format: Annotated[
        Literal["npz", "parquet", "csv"] | None,
        Form(description="npz | parquet | csv; default: from the file name"),
    ] = None,
    model_id: Annotated[
        str | None, Form(description="id of the old model that made the vectors")
    ] = None,
) -> GalleryImportResponse:
    """Idempotent per external id (re-importing the same file adds nothing). The upload streams
    to a temporary file (never held in memory whole); one transaction: a malformed file stores
    nothing."""
    check_media_type(file, allowed=IMPORT_MEDIA_TYPES, what="gallery file")
    size = file.size if file.size is not None else 0
    if size == 0:
        raise InvalidInput("empty file: the upload has no bytes")

    def run() -> ImportReport:
        file.file.seek(0)
        report = run_import(
            session_factory=state.session_factory,
            source=file.file,
            format=format,  # type: ignore[arg-type]
            filename=file.filename,
            model_id=model_id,
            settings=state.settings,
        )
        state.gallery.refresh()  # this replica at once; the others through the change log
        state.gallery.save()
        return report

    report = await state.pool.run(run)
    return GalleryImportResponse.model_validate(report)


@router.get(
    "/stats",
    operation_id="galleryStats",
    summary="Gallery size and index consistency (O(1))",
    response_model=GalleryStats,
    responses=problem_responses(403),
)
def gallery_stats(state: StateDep, session: DbSession, _auth: IdentifyScope) -> GalleryStats:
    """Counts from SQL's counters and the index's size (O(1) at any gallery size), and the
    result of the last full id-set comparison of index and SQL, run in the background."""
    store = state.index
    stats = store_module.gallery_stats(session=session, index=store, settings=state.settings)
    report = store_module.count_report(session=session, index=store)
    checked = state.gallery.last_check
    return GalleryStats(
        identities=stats.identities,
        faces=stats.faces,
        faces_by_source=stats.by_source,
        faces_by_space=stats.by_space,
        dim=stats.dim,
        model_id=stats.model_id,
        vector_store=store.engine,
        space=store.space,
        index_type=stats.index_type,
        index_vectors=stats.index_ntotal,
        consistent=report.consistent,
        consistency=report.detail,
        ids_consistent=None if checked is None else checked.consistent,
        ids_checked_at=state.gallery.last_check_at,
        change_log_position=state.gallery.feed.watermark,
    )
