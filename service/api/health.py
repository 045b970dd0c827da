"""GET /healthz (alive), GET /readyz (ready to serve), GET /metrics (Prometheus). No auth."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.api.deps import StateDep, app_state
from service.api.schemas import Health, Readiness, problem_responses
from service.errors import FacebridgeError
from service.metrics import METRICS_CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="healthz", summary="Liveness", response_model=Health)
async def healthz() -> Health:
    """The process is up and serving HTTP (models may still be loading)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="Readiness",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready (see checks)"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Models loaded, database reachable, FAISS index consistent with SQL. 503 otherwise."""
    try:
        state = app_state(request)
    except FacebridgeError as exc:
        body = Readiness(status="starting", ready=False, checks={"service": str(exc)})
        return JSONResponse(body.model_dump(), status_code=503)
    checks: dict[str, str] = await state.pool.run(state.readiness)
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
