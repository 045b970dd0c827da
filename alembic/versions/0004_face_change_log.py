"""face change log (replicas tail it) + sharded gallery counters; drop gallery_revision

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.create_table(
        "face_changes",
        sa.Column("seq", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("face_id", sa.BigInteger(), nullable=False),
        sa.Column("op", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("op IN ('add', 'remove')", name=op.f("ck_face_changes_op")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_face_changes")),
        sqlite_autoincrement=True,
    )
    counters = op.create_table(
        "gallery_counters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", "slot", name=op.f("pk_gallery_counters")),
    )
    bind = op.get_bind()
    identities = bind.execute(sa.text("SELECT count(*) FROM identities")).scalar() or 0
    rows = [{"name": "identities", "slot": 0, "value": int(identities)}]
    faces = 0
    for source, count in bind.execute(sa.text("SELECT source, count(*) FROM faces GROUP BY 1")):
        rows.append({"name": f"faces.{source}", "slot": 0, "value": int(count)})
        faces += int(count)
    rows.append({"name": "faces", "slot": 0, "value": faces})
    op.bulk_insert(counters, rows)
    with op.batch_alter_table("registry_state", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "changes_compacted_through",
                sa.BigInteger(),
                nullable=False,
                server_default=sa.text("0"),
            )
        )
        batch_op.drop_column("gallery_revision")
    if sqlite:  # face ids must never be reused (the vector stores key on them): AUTOINCREMENT
        with op.batch_alter_table(
            "faces", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass


def downgrade() -> None:
    with op.batch_alter_table("registry_state", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("gallery_revision", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.drop_column("changes_compacted_through")
    op.drop_table("gallery_counters")
    op.drop_table("face_changes")
