"""faces.space (one vector index per embedding space) + face_captures (progressive migration)

Existing rows are in the old model's space: its recorded model id, else ``default`` (the
service treats ``default`` as the old space's alias until a model id is recorded).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 03:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_SOURCES = "source IN ('legacy', 'mapped')"
NEW_SOURCES = "source IN ('legacy', 'mapped', 'native', 'captured')"
FaceFK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _faces(*, space: bool, sources: str) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    kwargs = {"recreate": "always", "table_kwargs": {"sqlite_autoincrement": True}}
    with op.batch_alter_table("faces", **(kwargs if sqlite else {})) as batch_op:
        batch_op.drop_constraint(op.f("ck_faces_source"), type_="check")
        batch_op.create_check_constraint(op.f("ck_faces_source"), sa.text(sources))
        if space:
            batch_op.add_column(
                sa.Column(
                    "space",
                    sa.String(length=255),
                    nullable=False,
                    server_default=sa.text("'default'"),
                )
            )
            batch_op.create_index(op.f("ix_faces_space"), ["space"], unique=False)
        else:
            batch_op.drop_index(op.f("ix_faces_space"))
            batch_op.drop_column("space")


def upgrade() -> None:
    _faces(space=True, sources=NEW_SOURCES)
    bind = op.get_bind()
    model = bind.execute(sa.text("SELECT gallery_model_id FROM registry_state WHERE id = 1"))
    old_space = model.scalar() or "default"
    bind.execute(sa.text("UPDATE faces SET space = :s"), {"s": old_space})
    with op.batch_alter_table("face_changes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("space", sa.String(length=255), nullable=True))
    op.create_table(
        "face_captures",
        sa.Column("face_id", FaceFK, autoincrement=False, nullable=False),
        sa.Column("identity_id", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("margin", sa.Float(), nullable=False),
        sa.Column("transformer_version", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["face_id"],
            ["faces.id"],
            name=op.f("fk_face_captures_face_id_faces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("face_id", name=op.f("pk_face_captures")),
    )
    op.create_index(
        op.f("ix_face_captures_created_at"), "face_captures", ["created_at"], unique=False
    )
    op.create_index(
        op.f("ix_face_captures_identity_id"), "face_captures", ["identity_id"], unique=False
    )


def downgrade() -> None:
    op.drop_table("face_captures")
    with op.batch_alter_table("face_changes", schema=None) as batch_op:
        batch_op.drop_column("space")
    bind = op.get_bind()
    bind.execute(sa.text("DELETE FROM faces WHERE source IN ('native', 'captured')"))
    bind.execute(sa.text("DELETE FROM gallery_counters WHERE name LIKE 'space.%'"))
    _faces(space=False, sources=OLD_SOURCES)
