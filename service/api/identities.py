"""Identities and their faces: /v1/identities[/{identity_id}[/faces[/{face_id}]]]."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Path, Query, Response, UploadFile, status

from service import identities as domain
from service.api.deps import DbSession, EnrolScope, IdentifyScope, MultipartBody, StateDep
from service.api.schemas import (
    MAX_DB_INT,
    NON_EMPTY_PARTS,
    EnrolResponse,
    Face,
    Identity,
    IdentityCreate,
    IdentityDetail,
    IdentityPage,
    IdentityUpdate,
    problem_responses,
)
from service.api.uploads import read_images
from service.migration.enrol import enrol_both

router = APIRouter(prefix="/v1/identities", tags=["identities"])

IdentityId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="the identity's id")]
FaceId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="the face's id (also its FAISS id)")]


@router.post(
    "",
    operation_id="createIdentity",
    summary="Create an identity",
    status_code=status.HTTP_201_CREATED,
    response_model=Identity,
    responses=problem_responses(403, 409, 422),
)
def create_identity(body: IdentityCreate, session: DbSession, _auth: EnrolScope) -> Identity:
    """A person, optionally keyed by your own ``external_id`` (unique)."""
    created = domain.create_identity(session=session, name=body.name, external_id=body.external_id)
    return Identity.model_validate(created)


@router.get(
    "",
    operation_id="listIdentities",
    summary="List identities",
    response_model=IdentityPage,
    responses=problem_responses(403, 422),
)
def list_identities(
    session: DbSession,
    _auth: IdentifyScope,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INT)] = 0,
    external_id: Annotated[str | None, Query(description="exact external id")] = None,
    name: Annotated[str | None, Query(description="case-insensitive substring of the name")] = None,
) -> IdentityPage:
    """Paginated, optionally filtered by exact external id or a name substring."""
    page = domain.list_identities(
        session=session, limit=limit, offset=offset, external_id=external_id, name=name
    )
    return IdentityPage(
        items=[Identity.model_validate(item) for item in page.items],
        total=page.total,
        limit=limit,
        offset=offset,
    )


@router.get(
    "/{identity_id}",
    operation_id="getIdentity",
    summary="Get an identity and its faces",
    response_model=IdentityDetail,
    responses=problem_responses(403, 404),
)
def get_identity(
    identity_id: IdentityId, session: DbSession, _auth: IdentifyScope
) -> IdentityDetail:
    identity = domain.get_identity(session=session, identity_id=identity_id)
    faces = domain.list_faces(session=session, identity_id=identity_id)
    detail = IdentityDetail.model_validate(identity)
    return detail.model_copy(
        update={"faces": [Face.model_validate(f) for f in faces], "face_count": len(faces)}
    )


@router.patch(
    "/{identity_id}",
    operation_id="updateIdentity",
    summary="Change an identity's name or external id",
    response_model=Identity,
    responses=problem_responses(403, 404, 409, 422),
)
def update_identity(
    identity_id: IdentityId, body: IdentityUpdate, session: DbSession, _auth: EnrolScope
) -> Identity:
    """Only the fields present in the body change (``null`` clears a field)."""
    changes = {key: getattr(body, key) for key in body.model_fields_set}
    updated = domain.update_identity(session=session, identity_id=identity_id, **changes)
    return Identity.model_validate(updated)


@router.delete(
    "/{identity_id}",
    operation_id="deleteIdentity",
    summary="Delete an identity and all its faces",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(403, 404),
)
def delete_identity(
    identity_id: IdentityId, state: StateDep, session: DbSession, _auth: EnrolScope
) -> Response:
    domain.delete_identity(session=session, index=state.index, identity_id=identity_id)
    state.gallery.refresh()  # its native vectors leave this process's other stores at once
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{identity_id}/faces",
    operation_id="enrolFaces",
    summary="Enrol face images for an identity",
    status_code=status.HTTP_201_CREATED,
    response_model=EnrolResponse,
    responses=problem_responses(403, 404, 413, 415, 422, 503),
)
async def enrol_faces(
    identity_id: IdentityId,
    state: StateDep,
    _auth: EnrolScope,
    _multipart: MultipartBody,
    image: Annotated[
        list[UploadFile],
        File(
            min_length=1,
            json_schema_extra=NON_EMPTY_PARTS,
            description="one or more images; one face is enrolled per image",
        ),
    ],
) -> EnrolResponse:
    """New backbone -> active transformer -> stored in the OLD space, marked ``mapped`` with the
    transformer version, so it is searchable next to the legacy vectors; the backbone's own
    vector is stored too, in its native space (``native``: progressive migration). The reply
    lists the mapped faces."""
    uploads = await read_images(image, max_images=state.settings.max_batch_images)

    def check_identity() -> None:
        with state.session_factory() as session:
            domain.get_identity(session=session, identity_id=identity_id)

    def store(vectors: np.ndarray, version: str, native: np.ndarray) -> list[domain.FaceInfo]:
        with state.session_factory() as session:
            return enrol_both(
                session=session,
                gallery=state.gallery,
                identity_id=identity_id,
                mapped=vectors,
                native=native,
                native_space=state.pipeline.backbone.model_id,
                transformer_version=version,
                settings=state.settings,
            )

    faces, mapped = await state.pool.run(
        state.pipeline.enrol, images=uploads, check_identity=check_identity, store=store
    )
    state.metrics.images.labels(operation="enrol").inc(len(faces))
    return EnrolResponse(
        identity_id=identity_id,
        faces=[Face.model_validate(f) for f in faces],
        backbone=mapped.backbone,
        transformer=mapped.transformer,
    )


@router.delete(
    "/{identity_id}/faces/{face_id}",
    operation_id="deleteFace",
    summary="Delete one face of an identity",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(403, 404),
)
def delete_face(
    identity_id: IdentityId,
    face_id: FaceId,
    state: StateDep,
    session: DbSession,
    _auth: EnrolScope,
) -> Response:
    domain.delete_face(session=session, index=state.index, identity_id=identity_id, face_id=face_id)
    state.gallery.refresh()  # a native face leaves its space's store at once
    return Response(status_code=status.HTTP_204_NO_CONTENT)
