"""POST /v1/identify and POST /v1/verify."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile

from service.api.deps import IdentifyScope, MultipartBody, StateDep
from service.api.problems import current_request_id
from service.api.schemas import (
    MAX_DB_INT,
    Candidate,
    IdentifyResponse,
    IdentifyResult,
    ImageProblem,
    Timings,
    VerifyResponse,
    problem_responses,
)
from service.api.uploads import read_images
from service.decision import Decision
from service.pipeline import Candidate as PipelineCandidate
from service.pipeline import IdentifyOutcome

router = APIRouter(prefix="/v1", tags=["identify"])

ImageParts = Annotated[
    list[UploadFile],
    File(
        min_length=1,
        description="one or more images (JPEG/PNG/WebP): aligned 112x112 crops or photos; "
        "several parts named `image` form a batch answered in order",
    ),
]
# No default in the schema (it is a setting); absent = FACEBRIDGE_DEFAULT_TOP_K. Typed int, not
# int | None: a query parameter cannot be null, and the schema stays one plain integer.
TopK = Annotated[
    int,
    Query(ge=1, le=100, description="candidates per image; default FACEBRIDGE_DEFAULT_TOP_K"),
]
Capture = Annotated[
    bool,
    Query(
        description="false: never keep this request's native vectors (FACEBRIDGE_CAPTURE; "
        "docs/service.md, progressive migration)"
    ),
]
Threshold = Annotated[
    float | None,
    Query(
        ge=-1.0,
        le=1.0,
        description="decision threshold (score) instead of the calibrated rule; default: "
        "identify: the open-set threshold for FACEBRIDGE_TARGET_FPIR at the live gallery size; "
        "verify: the score at FACEBRIDGE_VERIFY_TARGET_FAR (docs/service.md)",
    ),
]


def _candidate(c: PipelineCandidate) -> Candidate:
    return Candidate(
        identity_id=c.identity_id,
        external_id=c.external_id,
        name=c.name,
        score=c.score,
        spaces=list(c.spaces),
    )


def _result(outcome: IdentifyOutcome) -> IdentifyResult:
    error = outcome.error
    return IdentifyResult(
        index=outcome.index,
        filename=outcome.filename,
        status="ok" if error is None else error.code,
        problem=None if error is None else ImageProblem(**error.problem()),
        candidates=[_candidate(c) for c in outcome.candidates],
        match=None if outcome.match is None else _candidate(outcome.match),
        backbone=outcome.backbone,
        transformer=outcome.transformer,
        timings=Timings(**outcome.timings.as_ms()),
    )


@router.post(
    "/identify",
    operation_id="identify",
    summary="Who is in these images?",
    response_model=IdentifyResponse,
    responses=problem_responses(403, 413, 415, 422, 503),
)
async def identify(
    state: StateDep,
    _auth: IdentifyScope,
    _multipart: MultipartBody,
    image: ImageParts,
    top_k: TopK = None,  # type: ignore[assignment]
    threshold: Threshold = None,
    capture: Capture = True,
) -> IdentifyResponse:
    """Nearest identities in the gallery for each image (new backbone -> active transformer),
    with the open-set `match` decision. In a batch each image has its own `status`; a request
    of one image that fails answers with its problem instead."""
    uploads = await read_images(image, max_images=state.settings.max_batch_images)
    top_k = state.settings.default_top_k if top_k is None else top_k
    outcomes, decision = await state.pool.run(
        state.pipeline.identify,
        images=uploads,
        top_k=top_k,
        threshold=threshold,
        capture=capture,
        request_id=current_request_id(),
    )
    state.metrics.images.labels(operation="identify").inc(len(outcomes))
    state.metrics.count_decisions(outcomes)  # failed images too: their outcome says why
    if len(outcomes) == 1 and outcomes[0].error is not None:
        raise outcomes[0].error  # one image: its problem is the request's (4xx)
    return IdentifyResponse(
        results=[_result(o) for o in outcomes], top_k=top_k, **_decision_fields(decision)
    )


def _decision_fields(decision: Decision) -> dict[str, object]:
    gallery = decision.gallery
    return {
        "threshold": decision.threshold,
        "threshold_rule": decision.rule,
        "target_fpir": decision.target_fpir,
        "gallery_identities": 0 if gallery is None else gallery.identities,
        "gallery_faces": 0 if gallery is None else gallery.faces,
        "estimated_fpir": decision.estimated_fpir,
    }


@router.post(
    "/verify",
    operation_id="verify",
    summary="Is this image that identity?",
    response_model=VerifyResponse,
    responses=problem_responses(403, 404, 413, 415, 422, 503),
)
async def verify(
    state: StateDep,
    _auth: IdentifyScope,
    _multipart: MultipartBody,
    image: Annotated[
        UploadFile,
        File(description="one image (aligned crop or photo)", json_schema_extra={"minLength": 1}),
    ],
    identity_id: Annotated[
        int, Form(ge=1, le=MAX_DB_INT, description="the identity to compare with")
    ],
    threshold: Threshold = None,
) -> VerifyResponse:
    """Best cosine between the image and the identity's gallery vectors, and the decision."""
    (upload,) = await read_images([image], max_images=1)
    score, face_id, decision, mapped = await state.pool.run(
        state.pipeline.verify,
        image=upload,
        identity_vectors=lambda: state.identity_vectors(identity_id),
        threshold=threshold,
    )
    state.metrics.images.labels(operation="verify").inc()
    return VerifyResponse(
        identity_id=identity_id,
        score=score,
        threshold=decision.threshold,
        threshold_rule=decision.rule,
        target_far=decision.target_far,
        match=face_id is not None and score >= decision.threshold,
        face_id=face_id,
        backbone=mapped.backbone,
        transformer=mapped.transformer,
        timings=Timings(**mapped.timings[0].as_ms()),
    )
