"""Everything under /v1/admin: transformer versions and API keys. Every route needs ``admin``.

The admin check sits on the ROUTER (``dependencies=``), so a route added here later cannot
forget it; a test enumerates ``app.routes`` under /v1/admin and proves 401/403 for each.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, File, Form, Path, Query, Response, UploadFile, status

from service import keys
from service.api.deps import (
    SCOPE_ADMIN,
    AdminActor,
    DbSession,
    MultipartBody,
    StateDep,
    require_scope,
)
from service.api.rollout_schemas import ChangeReason
from service.api.schemas import (
    MAX_DB_INT,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyInfo,
    ApiKeyList,
    TransformerInfo,
    TransformerList,
    problem_responses,
)
from service.api.state import ServiceState
from service.api.uploads import check_media_type
from service.errors import InvalidInput
from service.registry import audit
from service.registry import store as registry

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[Depends(require_scope(SCOPE_ADMIN))],
)

Version = Annotated[str, Path(min_length=1, max_length=64, description="transformer version")]
ONNX_MEDIA_TYPES = frozenset({"application/onnx", "application/x-onnx", "application/protobuf"})
# Optional everywhere: a change without a reason is still recorded (who, when, from -> to).
ReasonBody = Annotated[
    ChangeReason | None,
    Body(
        description="optional: why (kept in the audit history)",
        openapi_examples={"reason": {"value": {"reason": "shadow agreement 99.2%"}}},
    ),
]
ReasonQuery = Annotated[
    str | None,
    Query(max_length=audit.MAX_REASON_LENGTH, description="why (kept in the audit history)"),
]


def _reason(body: ChangeReason | None) -> str | None:
    return None if body is None else body.reason


def _transformer(info: registry.StoredTransformer) -> TransformerInfo:
    return TransformerInfo(
        version=info.version,
        sha256=info.sha256,
        input_dim=info.input_dim,
        output_dim=info.output_dim,
        source_model=info.source_model,
        target_model=info.target_model,
        recipe=info.recipe,
        threshold=info.threshold,
        fusion_weight=info.fusion_weight,
        two_way=info.two_way,
        metrics=dict(info.metrics),
        active=info.active,
        uploaded_at=info.created_at,
        activated_at=info.activated_at,
    )


async def _refresh_holder(state: ServiceState) -> None:
    """Make THIS worker serve the new active version now (others follow via the poller); a
    switch also ends a shadow run, which this worker then stops sampling."""
    await state.pool.run(state.holder.refresh)
    await state.pool.run(state.shadow.refresh)


@router.post(
    "/transformers",
    operation_id="uploadTransformer",
    summary="Upload and validate a transformer (ONNX)",
    status_code=status.HTTP_201_CREATED,
    response_model=TransformerInfo,
    responses={
        200: {"model": TransformerInfo, "description": "identical file already uploaded"},
        **problem_responses(403, 413, 415, 422),
    },
)
async def upload_transformer(
    state: StateDep,
    actor: AdminActor,
    response: Response,
    _multipart: MultipartBody,
    file: Annotated[
        UploadFile,
        File(description="the transformer ONNX file", json_schema_extra={"minLength": 1}),
    ],
    activate: Annotated[bool, Form(description="activate it once validated")] = False,
    note: Annotated[str | None, Form(max_length=2000)] = None,
) -> TransformerInfo:
    """Validated against the artefact contract, the backbone and the gallery; a file that fails
    is refused (422) and nothing is stored, the active version unchanged."""
    check_media_type(file, allowed=ONNX_MEDIA_TYPES, what="transformer file")
    if not file.size:
        raise InvalidInput("empty file: the upload has no bytes")
    # The part was spooled to a temp file as it streamed in (never held whole in memory);
    # the registry copies it in chunks, hashing as it goes.
    info = await state.pool.run(
        registry.upload_transformer,
        session_factory=state.session_factory,
        settings=state.settings,
        data=file.file,
        filename=file.filename,
        activate=activate,
        note=note,
        actor=actor,
    )
    if activate:
        await _refresh_holder(state)
    if not getattr(info, "created", True):
        response.status_code = status.HTTP_200_OK
    return _transformer(info)


@router.get(
    "/transformers",
    operation_id="listTransformers",
    summary="List transformer versions",
    response_model=TransformerList,
    responses=problem_responses(403),
)
def list_transformers(state: StateDep, session: DbSession) -> TransformerList:
    items = [
        _transformer(info)
        for info in registry.list_transformers(session=session, settings=state.settings)
    ]
    active = next((item.version for item in items if item.active), None)
    return TransformerList(
        items=items, active=active, rollback_target=audit.rollback_target(session, active=active)
    )


@router.get(
    "/transformers/{version}",
    operation_id="getTransformer",
    summary="One transformer version",
    response_model=TransformerInfo,
    responses=problem_responses(403, 404),
)
def get_transformer(version: Version, state: StateDep, session: DbSession) -> TransformerInfo:
    return _transformer(
        registry.get_transformer(session=session, settings=state.settings, version=version)
    )


@router.post(
    "/transformers/rollback",
    operation_id="rollbackTransformer",
    summary="Re-activate the version before the current one in the activation history",
    response_model=TransformerInfo,
    responses=problem_responses(403, 409),
)
async def rollback_transformer(
    state: StateDep, actor: AdminActor, body: ReasonBody = None
) -> TransformerInfo:
    """The history is a stack: after activating A, B, C three rollbacks give B, A, then 409
    (nothing older), never a toggle between the last two."""
    info = await state.pool.run(
        registry.rollback_transformer,
        session_factory=state.session_factory,
        settings=state.settings,
        actor=actor,
        reason=_reason(body),
    )
    await _refresh_holder(state)
    return _transformer(info)


@router.post(
    "/transformers/{version}/activate",
    operation_id="activateTransformer",
    summary="Activate a transformer version (hot swap)",
    response_model=TransformerInfo,
    responses=problem_responses(403, 404, 409, 422),
)
async def activate_transformer(
    version: Version, state: StateDep, actor: AdminActor, body: ReasonBody = None
) -> TransformerInfo:
    """In-flight requests finish on the version they started with; other workers follow
    within ``generation_poll_seconds``. The audit record keeps the candidate's latest shadow
    figures, if it was shadowed."""
    info = await state.pool.run(
        registry.activate_transformer,
        session_factory=state.session_factory,
        settings=state.settings,
        version=version,
        actor=actor,
        reason=_reason(body),
    )
    await _refresh_holder(state)
    return _transformer(info)


@router.delete(
    "/transformers/{version}",
    operation_id="deleteTransformer",
    summary="Delete an inactive transformer version",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(403, 404, 409),
)
def delete_transformer(
    version: Version, state: StateDep, actor: AdminActor, reason: ReasonQuery = None
) -> Response:
    """Never the active one (409). It leaves the rollback history; its shadow run stops."""
    registry.delete_transformer(
        session_factory=state.session_factory,
        settings=state.settings,
        version=version,
        actor=actor,
        reason=reason,
    )
    state.shadow.refresh()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _key(info: keys.ApiKeyInfo) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=info.id,
        name=info.name or "",
        scopes=list(info.scopes),
        prefix=info.prefix,
        created_at=info.created_at,
        revoked=info.revoked,
    )


@router.post(
    "/keys",
    operation_id="createApiKey",
    summary="Create an API key (the secret is shown once)",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    responses=problem_responses(403, 422),
)
def create_api_key(body: ApiKeyCreate, session: DbSession, actor: AdminActor) -> ApiKeyCreated:
    info, secret = keys.create_key(
        session=session,
        scopes=list(body.scopes),
        name=body.name,
        actor=actor,
        reason=body.reason,
    )
    return ApiKeyCreated(**_key(info).model_dump(), key=secret)


@router.get(
    "/keys",
    operation_id="listApiKeys",
    summary="List API keys (never their secrets)",
    response_model=ApiKeyList,
    responses=problem_responses(403),
)
def list_api_keys(session: DbSession) -> ApiKeyList:
    return ApiKeyList(items=[_key(info) for info in keys.list_keys(session=session)])


@router.delete(
    "/keys/{key_id}",
    operation_id="revokeApiKey",
    summary="Revoke an API key",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(403, 404, 409),
)
def revoke_api_key(
    key_id: Annotated[int, Path(ge=1, le=MAX_DB_INT)],
    state: StateDep,
    session: DbSession,
    actor: AdminActor,
    reason: ReasonQuery = None,
    confirm: Annotated[
        bool, Query(description="required when the key revokes itself (409 otherwise)")
    ] = False,
) -> Response:
    """Effective at once in this worker; other workers forget cached keys within seconds.
    A revoked key stays revoked (also the bootstrap key: set a new FACEBRIDGE_ADMIN_KEY)."""
    keys.revoke_key(
        session=session,
        key_id=key_id,
        actor=actor,
        reason=reason,
        caller_id=actor.key_id,
        confirm=confirm,
    )
    state.verified_keys.clear()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
