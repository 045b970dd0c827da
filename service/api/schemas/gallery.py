"""Bodies of the identity, enrolment and gallery routes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from service.api.schemas.common import example_config


class IdentityCreate(BaseModel):
    model_config = example_config({"external_id": "emp-0042", "name": "Ada Lovelace"})
    external_id: str | None = Field(default=None, min_length=1, max_length=255)
    name: str | None = Field(default=None, max_length=255)


class IdentityUpdate(BaseModel):
    model_config = example_config({"name": "Ada King, Countess of Lovelace"})
    external_id: str | None = Field(default=None, min_length=1, max_length=255)
    name: str | None = Field(default=None, max_length=255)


class Face(BaseModel):
    model_config = example_config(
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
    model_config = example_config(
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
    model_config = example_config(
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
    model_config = example_config(
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
    model_config = example_config(
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
    model_config = example_config(
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
    model_config = example_config(
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
