"""transformer_versions.fusion_weight: 1 = forward map only, < 1 = two-way (fused scoring)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Versions stored before this revision were one-way (the contract had no backward map).
    with op.batch_alter_table("transformer_versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("fusion_weight", sa.Float(), nullable=False, server_default=sa.text("1.0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("transformer_versions", schema=None) as batch_op:
        batch_op.drop_column("fusion_weight")
