"""GET /healthz (alive), GET /readyz (ready to serve), GET /metrics (Prometheus). No auth.

``/readyz`` is cheap (a DB ping and a row count, no id sets) and runs in Starlette's thread
pool, not the inference pool, so a saturated service still answers it; the detailed FAISS vs
SQL comparison lives in ``GET /v1/gallery/stats`` and the metrics.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.api.deps import StateDep
from service.api.schemas import Health, Readiness, problem_responses
from service.metrics import METRICS_CONTENT_TYPE

router = APIRouter(tags=["health"])
READINESS_TIMEOUT_S = 5.0


@router.get(
    "/healthz",
    operation_id="healthz",
    summary="Liveness",
    response_model=Health,
    responses={503: {"model": Health, "description": "the start-up failed (see detail)"}},
)
async def healthz(request: Request) -> JSONResponse:
    """The process is up and serving HTTP, also while models load (``starting``). 503 only
    when the start-up failed for good: restarting the process is then the remedy."""
    startup = getattr(request.app.state, "facebridge_startup", None)
    if getattr(request.app.state, "facebridge", None) is not None or startup is None:
        body = Health(status="ok")
    elif startup.error is not None:
        body = Health(status="failed", detail=startup.error)
    else:
        body = Health(status="starting", detail=startup.describe())
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=503 if body.status == "failed" else 200
    )


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="Readiness",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready (see checks)"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Start-up done, database reachable, backbone loaded, the active transformer served,
    FAISS holding as many vectors as SQL has faces. 503 otherwise, naming the failed check."""
    state = getattr(request.app.state, "facebridge", None)
    if state is None:
        startup = getattr(request.app.state, "facebridge_startup", None)
        if startup is not None and startup.error is not None:
            checks = {"startup": f"fail: {startup.error}"}
            body = Readiness(status="failed", ready=False, checks=checks)
        else:
            doing = startup.describe() if startup is not None else "not started"
            body = Readiness(status="starting", ready=False, checks={"startup": doing})
        return JSONResponse(body.model_dump(), status_code=503)
    try:
        checks = await asyncio.wait_for(
            run_in_threadpool(state.readiness), timeout=READINESS_TIMEOUT_S
        )
    except TimeoutError:
        checks = {"database": f"fail: no answer within {READINESS_TIMEOUT_S} s"}
    ready = all(not value.startswith("fail") for value in checks.values())
    body = Readiness(status="ready" if ready else "not ready", ready=ready, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"example": "facebridge_gallery_vectors 1431.0\n"}},
            "description": "Prometheus text exposition",
        },
        **{k: v for k, v in problem_responses(503).items() if k == 503},
    },
)
async def metrics(state: StateDep) -> Response:
    state.refresh_gauges()
    return Response(content=state.metrics.render(), media_type=METRICS_CONTENT_TYPE)
