"""Safe rollout, under /v1/admin (admin scope on the router, like admin.py): the audit history
and shadow evaluation of a candidate transformer on live identify traffic."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Response, status
from sqlalchemy.orm import Session

from service.api.deps import SCOPE_ADMIN, AdminActor, DbSession, StateDep, require_scope
from service.api.rollout_schemas import (
    AuditEvent,
    AuditPage,
    ShadowOverview,
    ShadowRun,
    ShadowStart,
)
from service.api.schemas import problem_responses
from service.api.state import ServiceState
from service.registry import audit, shadow, shadow_store
from service.settings import ServiceSettings

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[Depends(require_scope(SCOPE_ADMIN))],
)

Version = Annotated[str, Path(min_length=1, max_length=64, description="transformer version")]


def _event(record: audit.AuditRecord) -> AuditEvent:
    return AuditEvent(
        id=record.id,
        at=record.at,
        action=record.action,
        actor_key_id=record.actor_key_id,
        actor=record.actor,
        subject=record.subject,
        from_value=record.from_value,
        to_value=record.to_value,
        reason=record.reason,
        details=record.details,
    )


@router.get(
    "/audit",
    operation_id="listAuditEvents",
    summary="The audit history, newest first",
    response_model=AuditPage,
    responses=problem_responses(403),
)
def list_audit_events(
    session: DbSession,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    action: Annotated[str | None, Query(max_length=32, description="e.g. activate")] = None,
    subject: Annotated[
        str | None, Query(max_length=255, description="a version, or 'key N ...'")
    ] = None,
) -> AuditPage:
    """Every activation, rollback, deactivation, delete, upload, key change and shadow run:
    who (key id), when, from -> to, and the reason given."""
    records, total = audit.list_events(
        session=session, limit=limit, offset=offset, action=action, subject=subject
    )
    return AuditPage(items=[_event(r) for r in records], total=total, limit=limit, offset=offset)


def _run(
    session: Session, info: shadow_store.ShadowRunInfo, *, settings: ServiceSettings
) -> ShadowRun:
    _, stats = shadow_store.get_run(session, run_id=info.id)
    return ShadowRun(**shadow.run_report(session, info=info, stats=stats, settings=settings))


def _run_by_id(*, state: ServiceState, run_id: int) -> ShadowRun:
    with state.session_factory() as session:
        info, stats = shadow_store.get_run(session, run_id=run_id)
        report = shadow.run_report(session, info=info, stats=stats, settings=state.settings)
        return ShadowRun(**report)


@router.post(
    "/transformers/{version}/shadow",
    operation_id="startShadow",
    summary="Shadow a candidate beside the active version on sampled identify traffic",
    status_code=status.HTTP_201_CREATED,
    response_model=ShadowRun,
    responses={
        200: {"model": ShadowRun, "description": "this candidate is already being shadowed"},
        **problem_responses(403, 404, 409, 422),
    },
)
async def start_shadow(
    version: Version,
    state: StateDep,
    actor: AdminActor,
    response: Response,
    body: Annotated[
        ShadowStart | None,
        Body(openapi_examples={"quarter": {"value": {"sample_rate": 0.25, "reason": "ridge"}}}),
    ] = None,
) -> ShadowRun:
    """Replies never change: a sampled reply's query vectors are mapped by the candidate off the
    request path (bounded queue; dropped when full) and both decisions are compared. Any switch
    of the active version ends the run."""
    body = body or ShadowStart()
    info = await state.pool.run(
        shadow.start_shadow,
        session_factory=state.session_factory,
        settings=state.settings,
        candidate=version,
        sample_rate=body.sample_rate,
        actor=actor,
        reason=body.reason,
    )
    await state.pool.run(state.shadow.refresh)  # this worker samples from now on
    if not info.created:
        response.status_code = status.HTTP_200_OK
    return await state.pool.run(_run_by_id, state=state, run_id=info.id)


@router.get(
    "/transformers/{version}/shadow",
    operation_id="getShadow",
    summary="The latest shadow run of a version, with its results",
    response_model=ShadowRun,
    responses=problem_responses(403, 404),
)
def get_shadow(version: Version, state: StateDep, session: DbSession) -> ShadowRun:
    state.shadow.flush()  # this worker's latest figures
    info, _ = shadow_store.latest_run_of(session, candidate=version)
    return _run(session, info, settings=state.settings)


@router.delete(
    "/transformers/{version}/shadow",
    operation_id="stopShadow",
    summary="Stop shadowing a version (its results stay readable)",
    response_model=ShadowRun,
    responses=problem_responses(403, 404),
)
def stop_shadow(
    version: Version,
    state: StateDep,
    session: DbSession,
    actor: AdminActor,
    reason: Annotated[str | None, Query(max_length=audit.MAX_REASON_LENGTH)] = None,
) -> ShadowRun:
    state.shadow.flush()
    info = shadow_store.stop_candidate(
        session_factory=state.session_factory, candidate=version, actor=actor, reason=reason
    )
    state.shadow.refresh()
    return _run(session, info, settings=state.settings)


@router.get(
    "/shadow",
    operation_id="listShadowRuns",
    summary="The running shadow run and the latest ones",
    response_model=ShadowOverview,
    responses=problem_responses(403),
)
def list_shadow_runs(
    state: StateDep, session: DbSession, limit: Annotated[int, Query(ge=1, le=100)] = 10
) -> ShadowOverview:
    state.shadow.flush()
    runs = [
        ShadowRun(**shadow.run_report(session, info=info, stats=stats, settings=state.settings))
        for info, stats in shadow_store.list_runs(session, limit=limit)
    ]
    current = next((run for run in runs if run.running), None)
    return ShadowOverview(current=current, runs=runs)
