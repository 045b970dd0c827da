"""initial schema: identities, faces, transformer_versions, registry_state, api_keys

Revision ID: 0001
Revises:
Create Date: 2026-11-29 07:18:08.157032
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_prefix"), ["prefix"], unique=False)

    op.create_table(
        "identities",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identities")),
        sa.UniqueConstraint("external_id", name=op.f("uq_identities_external_id")),
    )
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identities_name"), ["name"], unique=False)

    op.create_table(
        "registry_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("gallery_revision", sa.BigInteger(), nullable=False),
        sa.Column("active_version", sa.String(length=64), nullable=True),
        sa.Column("previous_version", sa.String(length=64), nullable=True),
        sa.Column("gallery_model_id", sa.String(length=255), nullable=True),
        sa.Column("gallery_dim", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_registry_state_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_state")),
    )
    # The single registry_state row every worker polls (generation starts at 0).
    registry_state = sa.table(
        "registry_state",
        sa.column("id", sa.Integer()),
        sa.column("generation", sa.BigInteger()),
        sa.column("gallery_revision", sa.BigInteger()),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    op.bulk_insert(
        registry_state,
        [{"id": 1, "generation": 0, "gallery_revision": 0, "updated_at": datetime.now(UTC)}],
    )
    op.create_table(
        "transformer_versions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("input_dim", sa.Integer(), nullable=False),
        sa.Column("output_dim", sa.Integer(), nullable=False),
        sa.Column("source_model", sa.String(length=255), nullable=False),
        sa.Column("target_model", sa.String(length=255), nullable=False),
        sa.Column("recipe", sa.String(length=255), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('inactive', 'active')", name=op.f("ck_transformer_versions_state")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transformer_versions")),
        sa.UniqueConstraint("sha256", name=op.f("uq_transformer_versions_sha256")),
        sa.UniqueConstraint("version", name=op.f("uq_transformer_versions_version")),
    )
    with op.batch_alter_table("transformer_versions", schema=None) as batch_op:
        batch_op.create_index(
            "uq_transformer_versions_one_active",
            ["state"],
            unique=True,
            sqlite_where=sa.text("state = 'active'"),
            postgresql_where=sa.text("state = 'active'"),
        )

    op.create_table(
        "faces",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "identity_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("transformer_version", sa.String(length=64), nullable=True),
        sa.Column("origin", sa.String(length=1024), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("source IN ('legacy', 'mapped')", name=op.f("ck_faces_source")),
        sa.CheckConstraint("dim > 0", name=op.f("ck_faces_dim_positive")),
        sa.ForeignKeyConstraint(
            ["identity_id"],
            ["identities.id"],
            name=op.f("fk_faces_identity_id_identities"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_faces")),
        sa.UniqueConstraint("identity_id", "content_hash", name="uq_faces_identity_content"),
    )
    with op.batch_alter_table("faces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_faces_identity_id"), ["identity_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("faces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_faces_identity_id"))

    op.drop_table("faces")
    with op.batch_alter_table("transformer_versions", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_transformer_versions_one_active",
            sqlite_where=sa.text("state = 'active'"),
            postgresql_where=sa.text("state = 'active'"),
        )

    op.drop_table("transformer_versions")
    op.drop_table("registry_state")
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identities_name"))

    op.drop_table("identities")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_prefix"))

    op.drop_table("api_keys")
