"""Request and response bodies of the HTTP API (pydantic), each with an OpenAPI example."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Scope = Literal["identify", "enrol", "admin"]

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


def _example(value: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [value]}, from_attributes=True)


class Problem(BaseModel):
    """Every error (RFC 9457 problem+json)."""

    model_config = _example(
        {
            "type": "https://facebridge.dev/problems/no-face",
            "title": "No face found",
            "status": 422,
            "detail": "image 0: no face found by the dlib detector",
            "code": "no-face",
            "instance": "/v1/identify",
            "request_id": "5f0c1e0b9d0a4b7e8f1e2d3c4b5a6978",
        }
    )
    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    request_id: str | None = None


class Timings(BaseModel):
    """Milliseconds per stage for one image (stages shared by a batch are split evenly)."""

    model_config = _example(_TIMINGS_EXAMPLE)
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
    model_config = _example(_CANDIDATE_EXAMPLE)
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

    model_config = _example(
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

    model_config = _example(
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
    model_config = _example(
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
    model_config = _example(
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


class IdentityCreate(BaseModel):
    model_config = _example({"external_id": "emp-0042", "name": "Ada Lovelace"})
    external_id: str | None = Field(default=None, min_length=1, max_length=255)
    name: str | None = Field(default=None, max_length=255)


class IdentityUpdate(BaseModel):
    model_config = _example({"name": "Ada King, Countess of Lovelace"})
    external_id: str | None = Field(default=None, min_length=1, max_length=255)
    name: str | None = Field(default=None, max_length=255)


class Face(BaseModel):
    model_config = _example(
        {
            "id": 1001,
            "identity_id": 42,
            "source": "mapped",
            "space": "dlib-resnet-v1",
            "transformer_version": "tf-20260101-ab12cd34",
            "created_at": "2026-01-01T12:00:00Z",
        }
    )
    id: int
    identity_id: int
    source: str = Field(
        description="'legacy' (imported old-model vector), 'mapped' (enrolled through the "
        "transformer), 'native' (the backbone's own vector of an enrolment) or 'captured' "
        "(kept from a confident identify)"
    )
    space: str = Field(default="", description="the embedding space (model id) the vector lives in")
    transformer_version: str | None
    created_at: datetime | None = None


class Identity(BaseModel):
    model_config = _example(
        {
            "id": 42,
            "external_id": "emp-0042",
            "name": "Ada Lovelace",
            "face_count": 2,
            "created_at": "2026-01-01T12:00:00Z",
            "updated_at": "2026-01-01T12:00:00Z",
        }
    )
    id: int
    external_id: str | None
    name: str | None
    face_count: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class IdentityDetail(Identity):
    model_config = _example(
        {
            "id": 42,
            "external_id": "emp-0042",
            "name": "Ada Lovelace",
            "face_count": 1,
            "created_at": "2026-01-01T12:00:00Z",
            "updated_at": "2026-01-01T12:00:00Z",
            "faces": [
                {
                    "id": 1001,
                    "identity_id": 42,
                    "source": "legacy",
                    "transformer_version": None,
                    "created_at": "2026-01-01T12:00:00Z",
                }
            ],
        }
    )
    faces: list[Face] = []


class IdentityPage(BaseModel):
    model_config = _example(
        {
            "items": [
                {
                    "id": 42,
                    "external_id": "emp-0042",
                    "name": "Ada Lovelace",
                    "face_count": 2,
                    "created_at": "2026-01-01T12:00:00Z",
                    "updated_at": "2026-01-01T12:00:00Z",
                }
            ],
            "total": 1,
            "limit": 50,
            "offset": 0,
        }
    )
    items: list[Identity]
    total: int
    limit: int
    offset: int


class EnrolResponse(BaseModel):
    model_config = _example(
        {
            "identity_id": 42,
            "faces": [
                {
                    "id": 1002,
                    "identity_id": 42,
                    "source": "mapped",
                    "transformer_version": "tf-20260101-ab12cd34",
                    "created_at": "2026-01-01T12:00:00Z",
                }
            ],
            "backbone": "mobilefacenet-128",
            "transformer": "tf-20260101-ab12cd34",
        }
    )
    identity_id: int
    faces: list[Face]
    backbone: str
    transformer: str | None


class GalleryImportResponse(BaseModel):
    model_config = _example(
        {
            "format": "npz",
            "rows": 1431,
            "identities_created": 1431,
            "identities_matched": 0,
            "faces_added": 1431,
            "faces_skipped": 0,
            "dim": 128,
        }
    )
    format: str
    rows: int
    identities_created: int
    identities_matched: int = Field(description="rows whose external id already existed")
    faces_added: int
    faces_skipped: int = Field(description="vectors the identity already had (idempotence)")
    dim: int | None


class GalleryStats(BaseModel):
    model_config = _example(
        {
            "identities": 1431,
            "faces": 1431,
            "faces_by_source": {"legacy": 1431, "mapped": 0},
            "dim": 128,
            "model_id": "dlib-resnet-v1",
            "vector_store": "faiss",
            "space": "dlib-resnet-v1",
            "index_type": "flat",
            "index_vectors": 1431,
            "consistent": True,
            "consistency": "index consistent with SQL (counts) (1431 vectors)",
            "ids_consistent": True,
            "ids_checked_at": "2026-01-01T12:00:00Z",
            "change_log_position": 1431,
        }
    )
    identities: int
    faces: int = Field(description="faces of the old model's space (legacy + mapped)")
    faces_by_source: dict[str, int]
    faces_by_space: dict[str, int] = Field(
        default_factory=dict, description="faces per embedding space (native spaces too)"
    )
    dim: int | None
    model_id: str | None
    vector_store: str = Field(description="faiss (embedded) or milvus")
    space: str = Field(description="the embedding space searched (the old model's id)")
    index_type: str
    index_vectors: int
    consistent: bool = Field(description="index count = SQL count (O(1), checked now)")
    consistency: str
    ids_consistent: bool | None = Field(
        default=None,
        description="the last full id-set comparison (run in the background every "
        "FACEBRIDGE_GALLERY_CHECK_SECONDS; null before the first)",
    )
    ids_checked_at: datetime | None = None
    change_log_position: int = Field(
        description="every face change up to this sequence is in this replica's index"
    )


class TransformerInfo(BaseModel):
    model_config = _example(
        {
            "version": "tf-20260101-ab12cd34",
            "sha256": "ab12cd34" + "0" * 56,
            "input_dim": 128,
            "output_dim": 128,
            "source_model": "mobilefacenet-128",
            "target_model": "dlib-resnet-v1",
            "recipe": "ridge",
            "threshold": 0.5,
            "fusion_weight": 0.9,
            "two_way": True,
            "metrics": {"top1": 92.1},
            "active": True,
            "created_at": "2026-01-01T12:00:00Z",
            "uploaded_at": "2026-01-01T12:05:00Z",
            "activated_at": "2026-01-01T12:06:00Z",
        }
    )
    version: str
    sha256: str
    input_dim: int
    output_dim: int
    source_model: str
    target_model: str
    recipe: str
    threshold: float | None = None
    fusion_weight: float = Field(
        default=1.0,
        description="weight of the old-space score in the fused score; 1 = forward map only",
    )
    two_way: bool = Field(
        default=False,
        description="the file carries the backward map too (fusion_weight < 1): identify and "
        "verify report fused scores",
    )
    metrics: dict[str, Any] = {}
    active: bool
    created_at: str | None = None
    uploaded_at: datetime | None = None
    activated_at: datetime | None = None


class TransformerList(BaseModel):
    model_config = _example(
        {
            "items": [TransformerInfo.model_config["json_schema_extra"]["examples"][0]],  # type: ignore[index]
            "active": "tf-20260101-ab12cd34",
            "rollback_target": "tf-20251201-0f9e8d7c",
        }
    )
    items: list[TransformerInfo]
    active: str | None
    rollback_target: str | None = Field(
        default=None,
        description="what POST .../rollback would re-activate (the activation history is a "
        "stack); None: nothing older",
    )


class ApiKeyCreate(BaseModel):
    model_config = _example({"name": "kiosk-3", "scopes": ["identify"]})
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(min_length=1)
    reason: str | None = Field(
        default=None, max_length=2000, description="why (kept in the audit history)"
    )


class ApiKeyInfo(BaseModel):
    model_config = _example(
        {
            "id": 3,
            "name": "kiosk-3",
            "scopes": ["identify"],
            "prefix": "fb_3k9x",
            "created_at": "2026-01-01T12:00:00Z",
            "revoked": False,
        }
    )
    id: int
    name: str
    scopes: list[str]
    prefix: str | None = None
    created_at: datetime | None = None
    revoked: bool = False


class ApiKeyCreated(ApiKeyInfo):
    model_config = _example(
        {
            "id": 3,
            "name": "kiosk-3",
            "scopes": ["identify"],
            "prefix": "fb_3k9x",
            "created_at": "2026-01-01T12:00:00Z",
            "revoked": False,
            "key": "fb_3k9x...the whole secret, shown once",
        }
    )
    key: str = Field(description="the secret; shown once, stored only as a hash")


class ApiKeyList(BaseModel):
    model_config = _example(
        {"items": [ApiKeyInfo.model_config["json_schema_extra"]["examples"][0]]}  # type: ignore[index]
    )
    items: list[ApiKeyInfo]


class Health(BaseModel):
    model_config = _example({"status": "ok"})
    status: str = Field(description="ok (serving), starting (still loading) or failed")
    detail: str | None = Field(
        default=None, description="what the start-up is doing, or why it failed"
    )


class Readiness(BaseModel):
    model_config = _example(
        {
            "status": "ready",
            "checks": {
                "database": "ok",
                "backbone": "mobilefacenet-128",
                "transformer": "t-3f2a9c0b1d4e",
                "index": "ok: 1431 vectors = 1431 faces in SQL",
            },
            "ready": True,
        }
    )
    status: str
    ready: bool
    checks: dict[str, str]


# The largest id/offset the databases hold (64-bit signed): larger values are refused with 422
# in the schema rather than overflowing in the driver (a 500).
MAX_DB_INT = 2**63 - 1
# Enrolment's file parts are never empty (one transaction: an empty part is a 422). Identify
# answers an empty part in a batch with that image's own error (200), so it does not say it.
NON_EMPTY_PARTS = {
    "items": {"type": "string", "contentMediaType": "application/octet-stream", "minLength": 1}
}

_PROBLEM_TITLES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Missing or unknown API key"),
    403: ("forbidden", "API key lacks the required scope"),
    404: ("not-found", "Not found"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("invalid-input", "Invalid input"),
    429: ("too-many-requests", "Too many requests"),
    503: ("unavailable", "Service not ready"),
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the problem+json errors a route can answer."""
    out: dict[int | str, dict[str, Any]] = {}
    # Every route can answer these: a body that cannot be parsed, no/unknown key, invalid
    # input, too many failed authentications from the address, the service still starting.
    for status in sorted({400, 401, 422, 429, 503, *statuses}):
        code, title = _PROBLEM_TITLES[status]
        example = {
            "type": f"https://facebridge.dev/problems/{code}",
            "title": title,
            "status": status,
            "detail": title,
            "code": code,
            "request_id": "5f0c1e0b9d0a4b7e8f1e2d3c4b5a6978",
        }
        out[status] = {
            "model": Problem,
            "description": title,
            "content": {"application/problem+json": {"example": example}},
        }
    return out
