"""SQLAlchemy 2 models: the source of truth. The FAISS index is a cache of ``faces`` keyed by id.

Every schema change goes through an Alembic migration (``alembic/versions``); a test compares
this metadata with the migrated schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# SQLite only auto-increments an "INTEGER PRIMARY KEY"; Postgres gets a 64-bit key (FAISS ids).
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# legacy/mapped: the old model's space; native (enrolled through the service) and captured
# (kept from a confident identify, service.migration) are in a backbone's own space.
FACE_SOURCES = ("legacy", "mapped", "native", "captured")
OLD_SPACE_SOURCES = ("legacy", "mapped")
# The old model's space while no model id is recorded (service.gallery.spaces: an alias of it).
UNNAMED_OLD_SPACE = "default"
TRANSFORMER_STATES = ("inactive", "active")
STATE_ACTIVE = "active"
STATE_INACTIVE = "inactive"
REGISTRY_STATE_ID = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite returns naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Identity(Base):
    """A person. ``external_id`` is the caller's key (unique when set)."""

    __tablename__ = "identities"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    external_id: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    name: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    # "metadata" is reserved on declarative classes; the column keeps the plain name.
    attributes: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSON, nullable=False, default=dict
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    faces: Mapped[list[Face]] = relationship(
        back_populates="identity", cascade="all, delete-orphan", passive_deletes=True
    )


class Face(Base):
    """One gallery vector in the embedding space ``space`` (a model id: the old model's for
    legacy/mapped rows, a backbone's for native/captured ones). ``id`` is its vector-store id
    (never reused: AUTOINCREMENT on SQLite, a sequence on PostgreSQL)."""

    __tablename__ = "faces"
    __table_args__ = (
        CheckConstraint("source IN ('legacy', 'mapped', 'native', 'captured')", name="source"),
        CheckConstraint("dim > 0", name="dim_positive"),
        # Idempotent imports: the same vector is stored once per identity.
        UniqueConstraint("identity_id", "content_hash", name="uq_faces_identity_content"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    identity_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"),
        ForeignKey("identities.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )
    vector: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # float32, L2-normalised
    dim: Mapped[int] = mapped_column(Integer, nullable=False)
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    source: Mapped[str] = mapped_column(String(16), nullable=False)
    space: Mapped[str] = mapped_column(
        String(255), nullable=False, index=True, server_default=text("'default'")
    )
    transformer_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    origin: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    identity: Mapped[Identity] = relationship(back_populates="faces")


FACE_CHANGE_OPS = ("add", "remove")


class FaceChange(Base):
    """The append-only face change log every replica tails (``service.gallery.changes``).

    One row per face added or removed, in the writer's transaction. ``seq`` is monotonic but
    NOT gap-free or commit-ordered on PostgreSQL (concurrent writers commit out of order;
    rollbacks burn values): readers track gaps. No foreign key: a removed face's rows stay.
    """

    __tablename__ = "face_changes"
    __table_args__ = (
        CheckConstraint("op IN ('add', 'remove')", name="op"),
        # SQLite: AUTOINCREMENT, so a seq is never reused after the newest row is compacted.
        {"sqlite_autoincrement": True},
    )

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    face_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    op: Mapped[str] = mapped_column(String(8), nullable=False)
    space: Mapped[str | None] = mapped_column(String(255), nullable=True)  # None: before 0005
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FaceCapture(Base):
    """Provenance of a native vector captured from a confident identify (migration ``0005``):
    when, which request, the fused score and margin that passed the capture rule, and the
    transformer version that scored it. Deleted with its face (an undo deletes the face)."""

    __tablename__ = "face_captures"

    face_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"),
        ForeignKey("faces.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    )
    identity_id: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    score: Mapped[float] = mapped_column(Float, nullable=False)
    margin: Mapped[float] = mapped_column(Float, nullable=False)
    transformer_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class GalleryCounter(Base):
    """Sharded counters (identities, faces, faces.<source>) so ``/v1/gallery/stats`` is O(1)
    without one hot row: each writer adds its delta to a random slot; readers sum the slots."""

    __tablename__ = "gallery_counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class TransformerVersion(Base):
    """An uploaded, validated transformer. At most one row is ``active`` (partial unique index)."""

    __tablename__ = "transformer_versions"
    __table_args__ = (
        CheckConstraint("state IN ('inactive', 'active')", name="state"),
        Index(
            "uq_transformer_versions_one_active",
            "state",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    file_name: Mapped[str] = mapped_column(String(255), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    input_dim: Mapped[int] = mapped_column(Integer, nullable=False)
    output_dim: Mapped[int] = mapped_column(Integer, nullable=False)
    source_model: Mapped[str] = mapped_column(String(255), nullable=False)
    target_model: Mapped[str] = mapped_column(String(255), nullable=False)
    recipe: Mapped[str] = mapped_column(String(255), nullable=False)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    # 1 = forward map only; < 1 = two-way file, scores fused (service.fusion)
    fusion_weight: Mapped[float] = mapped_column(
        Float, nullable=False, default=1.0, server_default=text("1.0")
    )
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default=STATE_INACTIVE)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RegistryState(Base):
    """One row (id = 1): the counters every worker polls, rollback memory, gallery facts."""

    __tablename__ = "registry_state"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # Face change log entries with seq <= this were compacted away (written by compaction only):
    # a replica whose applied watermark is below it must rebuild from SQL.
    changes_compacted_through: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default=text("0")
    )
    active_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    gallery_model_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    gallery_dim: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    """An API key, stored as sha256 of the (high-entropy, random) key; looked up by prefix."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    prefix: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    scopes: Mapped[str] = mapped_column(String(255), nullable=False)  # comma-separated
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AuditEvent(Base):
    """One change an operator made (migration ``0003``): who (key id), when, what, from -> to, why.

    Append-only. Transformer rows replay it as the activation history that rollback walks
    (:mod:`service.registry.audit`); key changes and shadow runs are recorded here too. No
    foreign keys: a record outlives the version or key it names.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    actor_key_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    subject: Mapped[str | None] = mapped_column(String(255), nullable=True)
    from_value: Mapped[str | None] = mapped_column(String(255), nullable=True)
    to_value: Mapped[str | None] = mapped_column(String(255), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)


SHADOW_STATES = ("running", "stopped")
SHADOW_RUNNING = "running"
SHADOW_STOPPED = "stopped"


class ShadowRun(Base):
    """A candidate transformer evaluated beside the active one on sampled live traffic.

    At most one run is ``running`` (partial unique index, as for the active transformer); every
    worker polls for it. Results live per worker in :class:`ShadowResult` and are summed on read.
    """

    __tablename__ = "shadow_runs"
    __table_args__ = (
        CheckConstraint("status IN ('running', 'stopped')", name="status"),
        CheckConstraint("sample_rate > 0 AND sample_rate <= 1", name="sample_rate"),
        Index(
            "uq_shadow_runs_one_running",
            "status",
            unique=True,
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    candidate_version: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    baseline_version: Mapped[str] = mapped_column(String(64), nullable=False)
    sample_rate: Mapped[float] = mapped_column(Float, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=SHADOW_RUNNING)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_by_key_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    results: Mapped[list[ShadowResult]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )


class ShadowResult(Base):
    """One worker's cumulative statistics for one shadow run (the worker rewrites its own row)."""

    __tablename__ = "shadow_results"
    __table_args__ = (UniqueConstraint("run_id", "worker", name="uq_shadow_results_run_worker"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"),
        ForeignKey("shadow_runs.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )
    worker: Mapped[str] = mapped_column(String(128), nullable=False)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    run: Mapped[ShadowRun] = relationship(back_populates="results")
