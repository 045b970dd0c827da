"""Typed service settings (pydantic-settings, env prefix ``FACEBRIDGE_``).

Every field carries a description: ``docs/configuration.md`` is generated from this class
(``python -m service.settings_docs --write``). Secrets come from the environment only; placeholder
values such as ``changeme`` are refused so a copied example never reaches production.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from service.migration.settings import MigrationSettings
from service.settings_request import RequestPathSettings
from service.settings_secrets import (
    MIN_ADMIN_KEY_BITS,
    MIN_ADMIN_KEY_LENGTH,
    character_entropy_bits,
    is_placeholder_secret,
)

IndexType = Literal["auto", "flat", "ivf", "ivfsq", "ivfpq", "hnsw"]
VectorStoreEngine = Literal["faiss", "milvus"]
MilvusIndexType = Literal["AUTOINDEX", "FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "HNSW_SQ"]
Detector = Literal["auto", "dlib", "none"]
Device = Literal["cpu", "cuda"]


class ServiceSettings(RequestPathSettings, MigrationSettings):
    """Everything the service and the ``facebridge`` service commands read from the env."""

    model_config = SettingsConfigDict(env_prefix="FACEBRIDGE_", extra="ignore", frozen=True)

    # --- storage ------------------------------------------------------------------------------
    database_url: str = Field(
        default="sqlite:///./var/facebridge.db",
        description="SQLAlchemy database URL. SQLite file by default; PostgreSQL as "
        "`postgresql+psycopg://user:password@host:5432/db`. The source of truth.",
    )
    data_dir: Path = Field(
        default=Path("./var"),
        description="Directory for local state (FAISS index, uploaded transformers).",
    )
    index_path: Path | None = Field(
        default=None,
        description="FAISS index file (a cache, rebuilt from SQL when missing or inconsistent). "
        "Default: `<data_dir>/gallery.faiss`.",
    )
    vector_store: VectorStoreEngine = Field(
        default="faiss",
        description="Vector-store engine: `faiss` (embedded: each process holds its index and "
        "follows the face change log) or `milvus` (a Milvus collection per embedding space; "
        "needs the `milvus` extra; see `milvus_uri`).",
    )
    index_type: IndexType = Field(
        default="auto",
        description="FAISS index type: `auto` (by gallery size: `flat` below 50,000 vectors, "
        "`ivf` below 500,000, then `ivfsq`; bench/gallery_scale.py), `flat` (exact), `ivf` "
        "(inverted lists, exact scores), `ivfsq` (inverted lists + 6-bit scalar quantiser: "
        "0.20x the raw memory at 128-d), `ivfpq` (inverted lists + product quantiser, "
        "`ivfpq_m` bytes a vector) or `hnsw` (graph; removals are tombstones, rebuilt past "
        "10%).",
    )
    ivf_nlist: int | None = Field(
        default=None,
        ge=1,
        description="IVF: number of inverted lists. Unset: ~4 sqrt(n) (a power of two), at most "
        "n / 39; an index is retrained when the gallery's ideal nlist reaches 4x its own.",
    )
    ivf_nprobe: int | None = Field(
        default=None,
        ge=1,
        description="IVF: lists visited per query. Unset: max(32, nlist / 128), i.e. 32 up to "
        "4,096 lists and 64 at 8,192 (recall@1 0.96 at 1M and 0.93 at 10M vectors: "
        "bench/gallery_scale.py).",
    )
    ivfpq_m: int | None = Field(
        default=None,
        ge=1,
        description="IVF-PQ: sub-quantizers (bytes per vector code). Unset: dim / 2, at most 64.",
    )
    hnsw_m: int = Field(default=32, ge=4, description="HNSW: neighbours per node.")
    hnsw_ef_search: int = Field(default=64, ge=1, description="HNSW: search breadth.")
    hnsw_ef_construction: int = Field(default=80, ge=1, description="HNSW: build breadth.")
    milvus_uri: str | None = Field(
        default=None,
        description="Milvus: a file path runs Milvus Lite in this process (the `milvus-lite` "
        "package; one process per file: tests, one node); `http://HOST:19530` reaches a Milvus "
        "standalone server or cluster (shared by every replica). Default: "
        "`<data_dir>/milvus.db`.",
    )
    milvus_token: SecretStr | None = Field(
        default=None, description="Milvus: `user:password` or an API token (cluster auth)."
    )
    milvus_collection_prefix: str = Field(
        default="facebridge",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Milvus: collections are named `<prefix>_<space>` (one per embedding space).",
    )
    milvus_index_type: MilvusIndexType = Field(
        default="HNSW",
        description="Milvus index type (build and search parameters from the `ivf_*` / "
        "`hnsw_*` settings). Milvus Lite supports all but `IVF_PQ`.",
    )
    milvus_consistency_level: Literal["Strong", "Session", "Bounded", "Eventually"] = Field(
        default="Session",
        description="Milvus read consistency: `Session` sees this replica's own writes at once; "
        "other replicas' writes within Milvus's bounded staleness (`Strong` waits for them).",
    )
    gallery_check_seconds: float = Field(
        default=600.0,
        ge=0,
        description="How often each process compares its index's id set with SQL's in the "
        "background (O(n); 0 = never); the result is in `GET /v1/gallery/stats` and the "
        "`facebridge_gallery_consistent` metric. /readyz compares counts only (O(1)).",
    )
    change_log_retention: int = Field(
        default=1_000_000,
        ge=1000,
        description="Face change log entries kept; older ones are compacted away. A replica "
        "further behind than this rebuilds its index from SQL.",
    )
    transformers_dir: Path | None = Field(
        default=None,
        description="Where uploaded transformer ONNX files are stored, content-addressed by "
        "sha256. Default: `<data_dir>/transformers`.",
    )

    # --- models -------------------------------------------------------------------------------
    backbone_manifest: Path | None = Field(
        default=None,
        description="Backbone manifest JSON (the new model; ONNX file beside it). Unset: the "
        "service cannot embed images and uploads skip the backbone-dimension check.",
    )
    gallery_model_id: str | None = Field(
        default=None,
        description="Model id of the old model that produced the gallery vectors (e.g. "
        "`dlib-resnet-v1`). Transformers must name it as their target model. Unset: the id "
        "recorded by `gallery import --model-id` is used, if any.",
    )
    gallery_dim: int | None = Field(
        default=None,
        gt=0,
        description="Dimension of gallery vectors. Unset: taken from the first stored vector.",
    )
    validation_pairs: Path | None = Field(
        default=None,
        description="Optional pairs file (.npz, split=eval rows used when present) on which "
        "every uploaded transformer is scored; metrics are stored with the version.",
    )
    probe_vectors: int = Field(
        default=64,
        ge=1,
        description="Random probe vectors an uploaded transformer must map to finite outputs.",
    )
    detector: Detector = Field(
        default="auto",
        description="Face detector: `dlib` (needs the detect extra), `none` (clients send "
        "aligned 112x112 crops) or `auto` (dlib when installed, else none).",
    )
    device: Device = Field(
        default="cpu", description="Inference device for ONNX Runtime: `cpu` or `cuda`."
    )
    require_cuda: bool = Field(
        default=False,
        description="Refuse to start unless ONNX Runtime's CUDA provider is active.",
    )

    # --- threads ------------------------------------------------------------------------------
    ort_intra_op_threads: int = Field(
        default=1, ge=1, description="ONNX Runtime intra-op threads per session."
    )
    faiss_threads: int = Field(
        default=1, ge=1, description="FAISS OpenMP threads (set once at service start)."
    )
    inference_threads: int = Field(
        default=2,
        ge=1,
        description="Worker threads for blocking work (decode, ONNX, FAISS) per process.",
    )

    # --- limits -------------------------------------------------------------------------------
    max_upload_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted by image routes (identify, verify, enrol).",
    )
    max_import_bytes: int = Field(
        default=2 * 1024 * 1024 * 1024,
        ge=1024,
        description="Largest gallery import file accepted over HTTP.",
    )
    max_transformer_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Largest transformer ONNX upload.",
    )
    max_image_pixels: int = Field(
        default=40_000_000,
        ge=112 * 112,
        description="Largest decoded image (width x height); bigger images are refused.",
    )
    max_batch_images: int = Field(
        default=16, ge=1, description="Most images in one identify/verify request."
    )
    max_request_pixels: int = Field(
        default=64_000_000,
        ge=112 * 112,
        description="Most decoded pixels (width x height, summed over the images) in one "
        "request; checked from the image headers before decoding.",
    )
    detect_max_side: int = Field(
        default=1280,
        ge=112,
        description="The face detector runs on a copy of the photo scaled down to at most this "
        "many pixels on its longest side; the face is then aligned from the full-size photo.",
    )
    max_import_rows: int = Field(
        default=5_000_000,
        ge=1,
        description="Most rows in one gallery import file (checked from the file's headers "
        "before its data is read).",
    )
    max_import_expanded_bytes: int = Field(
        default=16 * 1024**3,
        ge=1024,
        description="Most bytes a gallery import file may expand to once decompressed (the "
        "sum of its arrays or columns, from the headers before its data is read): a zip bomb is "
        "refused with 422, never allocated.",
    )
    auth_failure_limit: int = Field(
        default=20,
        ge=0,
        description="Failed authentications (401) allowed per client address within "
        "`auth_failure_window_seconds`; past it that address gets 429 with `Retry-After` (keys "
        "it already used successfully still pass). 0 turns the limit off. Behind a reverse "
        "proxy, run uvicorn with `--proxy-headers` so the client address is the real one.",
    )
    auth_failure_window_seconds: float = Field(
        default=60.0,
        gt=0,
        description="The window of `auth_failure_limit`, in seconds.",
    )

    # --- behaviour ----------------------------------------------------------------------------
    default_top_k: int = Field(
        default=5, ge=1, le=100, description="Candidates returned by identify by default."
    )
    target_fpir: float = Field(
        default=0.01,
        gt=0.0,
        lt=1.0,
        description="Identify's open-set target: the share of searches by people who are NOT "
        "enrolled that may still get a `match`. The threshold follows from it, the active "
        "transformer's calibration and the live gallery size (docs/service.md).",
    )
    verify_target_far: float = Field(
        default=1e-3,
        gt=0.0,
        lt=1.0,
        description="Verify's 1:1 target: false-accept rate per comparison (one image against "
        "one identity), through the active transformer's calibration.",
    )
    default_threshold: float = Field(
        default=0.5,
        ge=-1.0,
        le=1.0,
        description="Score threshold when the active transformer carries neither a calibration "
        "nor a threshold of its own (not open-set safe: docs/service.md).",
    )
    flip_average_queries: bool = Field(
        default=True,
        description="Embed every query face twice, as is and mirrored left-right, and average "
        "the two unit vectors (identify, verify and enrolment). Test-time augmentation: on the "
        "sample kit +0.3 to +0.8 top-1 on the eval split and +0.2 TAR@FAR=1e-3 in bridge "
        "cross-validation; costs a second backbone pass per face (run in the same ONNX Runtime "
        "call).",
    )
    generation_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often each worker polls the database for a transformer activation.",
    )
    shadow_sample_rate: float = Field(
        default=0.1,
        gt=0.0,
        le=1.0,
        description="Share of identify replies a shadow run compares with its candidate "
        "transformer, unless the start request names another (`sample_rate`). The comparison "
        "runs off the request path and never changes a reply.",
    )
    shadow_queue_size: int = Field(
        default=64,
        ge=1,
        description="Sampled replies waiting for the shadow thread; when full, further samples "
        "are dropped (counted), so a shadow run never slows identify down.",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="Bootstrap admin API key (at least 16 characters, not a placeholder nor a "
        "repeated pattern; stored hashed at start). Revoking it through the API is final: a "
        "revoked key is not restored at the next start, set a new one. Alternative: "
        "`facebridge keys create --scope admin`.",
    )

    # --- server -------------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address `facebridge service run` binds.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port it listens on.")
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level."
    )

    @field_validator("admin_key")
    @classmethod
    def _refuse_placeholder_admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        if is_placeholder_secret(raw):
            raise ValueError("admin_key is a placeholder; generate one (secrets.token_urlsafe)")
        if len(raw) < MIN_ADMIN_KEY_LENGTH:
            raise ValueError(f"admin_key must have at least {MIN_ADMIN_KEY_LENGTH} characters")
        if character_entropy_bits(raw) < MIN_ADMIN_KEY_BITS:
            raise ValueError(
                "admin_key has too little entropy (repeated characters or a short pattern); "
                "generate one (secrets.token_urlsafe)"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _refuse_placeholder_db_password(cls, value: str) -> str:
        from sqlalchemy.engine import make_url

        try:
            url = make_url(value)
        except Exception as exc:
            raise ValueError(f"not a database URL: {exc}") from exc
        if url.password is not None and is_placeholder_secret(str(url.password)):
            raise ValueError("database_url carries a placeholder password; set a real one")
        return value

    @model_validator(mode="after")
    def _cuda_needs_cuda_device(self) -> ServiceSettings:
        if self.require_cuda and self.device != "cuda":
            raise ValueError("require_cuda=true needs device=cuda")
        return self

    # --- derived ------------------------------------------------------------------------------
    @property
    def index_file(self) -> Path:
        """The FAISS index file (``index_path`` or ``<data_dir>/gallery.faiss``)."""
        return self.index_path if self.index_path is not None else self.data_dir / "gallery.faiss"

    @property
    def milvus_file_or_uri(self) -> str:
        """``milvus_uri`` or Milvus Lite at ``<data_dir>/milvus.db``."""
        return self.milvus_uri or str(self.data_dir / "milvus.db")

    @property
    def transformers_path(self) -> Path:
        """Directory of stored transformer files."""
        if self.transformers_dir is not None:
            return self.transformers_dir
        return self.data_dir / "transformers"

    @property
    def providers(self) -> tuple[str, ...]:
        """ONNX Runtime providers to request, in order."""
        if self.device == "cuda":
            return ("CUDAExecutionProvider", "CPUExecutionProvider")
        return ("CPUExecutionProvider",)


def load_settings(**overrides: object) -> ServiceSettings:
    """Settings from the environment, with keyword overrides (tests, CLI options)."""
    return ServiceSettings(**overrides)  # type: ignore[arg-type]
