"""Bodies of POST /v1/identify and POST /v1/verify."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.api.schemas.common import example_config

_TIMINGS_EXAMPLE = {
    "decode_ms": 0.9,
    "align_ms": 0.1,
    "embed_ms": 12.4,
    "map_ms": 0.2,
    "search_ms": 0.3,
    "rerank_ms": 0.1,
    "lookup_ms": 1.1,
    "total_ms": 15.3,
}
_CANDIDATE_EXAMPLE = {
    "identity_id": 42,
    "external_id": "emp-0042",
    "name": "Ada Lovelace",
    "score": 0.83,
}


class Timings(BaseModel):
    """Milliseconds per stage for one image (stages shared by a batch are split evenly)."""

    model_config = example_config(_TIMINGS_EXAMPLE)
    decode_ms: float
    align_ms: float
    embed_ms: float
    map_ms: float
    search_ms: float
    rerank_ms: float = Field(
        description="fused re-scoring of the search's candidates (two-way transformers; else 0)"
    )
    lookup_ms: float
    total_ms: float


class Candidate(BaseModel):
    model_config = example_config(_CANDIDATE_EXAMPLE)
    identity_id: int
    external_id: str | None
    name: str | None
    score: float = Field(
        description="cosine similarity in the old model's space; for a two-way transformer the "
        "fused score w * cos(f(query), g) + (1 - w) * cos(query, h(g)), also in [-1, 1]; "
        "with native vectors in the gallery, the identity's evidence fused across spaces, on "
        "the mapped score's scale (docs/service.md, progressive migration)"
    )
    spaces: list[str] = Field(
        default_factory=list,
        description="the embedding spaces (model ids) whose vectors gave this candidate "
        "evidence; empty on the one-space path",
    )


class ImageProblem(BaseModel):
    """Why one image of a batch has no answer (the problem+json fields, without request id)."""

    model_config = example_config(
        {
            "type": "https://facebridge.dev/problems/no-face",
            "title": "No face found",
            "status": 422,
            "detail": "image 3: no face found by the dlib detector",
            "code": "no-face",
        }
    )
    type: str
    title: str
    status: int
    detail: str
    code: str


class IdentifyResult(BaseModel):
    """The answer for one uploaded image, in upload order."""

    model_config = example_config(
        {
            "index": 0,
            "filename": "probe.jpg",
            "status": "ok",
            "problem": None,
            "candidates": [_CANDIDATE_EXAMPLE],
            "match": _CANDIDATE_EXAMPLE,
            "backbone": "mobilefacenet-128",
            "transformer": "tf-20260101-ab12cd34",
            "timings": _TIMINGS_EXAMPLE,
        }
    )
    index: int
    filename: str | None = None
    status: str = Field(
        default="ok",
        description="`ok`, or the problem code of this image (e.g. `no-face`, `invalid-image`)",
    )
    problem: ImageProblem | None = Field(
        default=None, description="why this image has no answer (status != ok), else null"
    )
    candidates: list[Candidate] = Field(description="best first, one per identity; [] on error")
    match: Candidate | None = Field(
        description="the top candidate when its score >= threshold, else null"
    )
    backbone: str = Field(description="model id of the backbone used")
    transformer: str | None = Field(description="transformer version used (null: identity map)")
    timings: Timings


class IdentifyResponse(BaseModel):
    model_config = example_config(
        {
            "results": [IdentifyResult.model_config["json_schema_extra"]["examples"][0]],  # type: ignore[index]
            "top_k": 5,
            "threshold": 0.9194,
            "threshold_rule": "target-fpir",
            "target_fpir": 0.01,
            "gallery_identities": 1225,
            "gallery_faces": 1225,
            "estimated_fpir": 0.01,
        }
    )
    results: list[IdentifyResult] = Field(
        description="one per image, in upload order; HTTP 200 even when some images failed"
    )
    top_k: int
    threshold: float = Field(description="the score a top candidate needed to be the `match`")
    threshold_rule: str = Field(
        description="what set it: `target-fpir` (calibrated open-set rule: target_fpir at the "
        "live gallery size), `explicit` (the threshold query parameter), `transformer-threshold` "
        "or `default` (uncalibrated fallbacks for older transformer files; not open-set safe)"
    )
    target_fpir: float | None = Field(
        description="the open-set target: share of searches by non-enrolled people allowed a "
        "match (null unless threshold_rule is target-fpir)"
    )
    gallery_identities: int = Field(description="identities with at least one face, now")
    gallery_faces: int = Field(
        description="gallery vectors searched, now: the N of FPIR = 1 - (1 - FAR)^N"
    )
    estimated_fpir: float | None = Field(
        description="the calibration's FPIR for this threshold at this gallery size (null "
        "without calibration)"
    )


class VerifyResponse(BaseModel):
    model_config = example_config(
        {
            "identity_id": 42,
            "score": 0.91,
            "threshold": 0.885,
            "threshold_rule": "target-far",
            "target_far": 0.001,
            "match": True,
            "face_id": 1001,
            "backbone": "mobilefacenet-128",
            "transformer": "tf-20260101-ab12cd34",
            "timings": _TIMINGS_EXAMPLE,
        }
    )
    identity_id: int
    score: float = Field(
        description="best score over the identity's faces (cosine, or the fused score for a "
        "two-way transformer, as in identify)"
    )
    threshold: float
    threshold_rule: str = Field(
        description="`target-far` (1:1: the calibrated score at target_far per comparison), "
        "`explicit`, `transformer-threshold` or `default` (uncalibrated fallbacks)"
    )
    target_far: float | None = Field(
        description="the 1:1 false-accept rate per comparison (null unless target-far)"
    )
    match: bool = Field(description="score >= threshold")
    face_id: int | None = Field(description="the identity's face that scored best")
    backbone: str
    transformer: str | None
    timings: Timings
