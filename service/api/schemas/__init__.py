"""Request and response bodies of the HTTP API (pydantic), each with an OpenAPI example: one
module per group of routes, all re-exported here."""

from __future__ import annotations

from service.api.schemas.admin import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyInfo,
    ApiKeyList,
    Health,
    Readiness,
    TransformerInfo,
    TransformerList,
)
from service.api.schemas.common import (
    MAX_DB_INT,
    NON_EMPTY_PARTS,
    Problem,
    Scope,
    example_config,
    problem_responses,
)
from service.api.schemas.gallery import (
    EnrolResponse,
    Face,
    GalleryImportResponse,
    GalleryStats,
    Identity,
    IdentityCreate,
    IdentityDetail,
    IdentityPage,
    IdentityUpdate,
)
from service.api.schemas.identify import (
    Candidate,
    IdentifyResponse,
    IdentifyResult,
    ImageProblem,
    Timings,
    VerifyResponse,
)

__all__ = [
    "MAX_DB_INT",
    "NON_EMPTY_PARTS",
    "ApiKeyCreate",
    "ApiKeyCreated",
    "ApiKeyInfo",
    "ApiKeyList",
    "Candidate",
    "EnrolResponse",
    "Face",
    "GalleryImportResponse",
    "GalleryStats",
    "Health",
    "IdentifyResponse",
    "IdentifyResult",
    "Identity",
    "IdentityCreate",
    "IdentityDetail",
    "IdentityPage",
    "IdentityUpdate",
    "ImageProblem",
    "Problem",
    "Readiness",
    "Scope",
    "Timings",
    "TransformerInfo",
    "TransformerList",
    "VerifyResponse",
    "example_config",
    "problem_responses",
]
