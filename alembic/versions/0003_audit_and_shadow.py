"""audit_events (who changed what, when, why), shadow_runs + shadow_results (shadow evaluation)

An existing database's last switch (registry_state.previous_version -> active_version) becomes
the first audit event, so a rollback right after the upgrade still finds the previous version.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("actor_key_id", sa.BigInteger(), nullable=True),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=True),
        sa.Column("from_value", sa.String(length=255), nullable=True),
        sa.Column("to_value", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_events_action"), ["action"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_audit_events_created_at"), ["created_at"], unique=False
        )

    op.create_table(
        "shadow_runs",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("candidate_version", sa.String(length=64), nullable=False),
        sa.Column("baseline_version", sa.String(length=64), nullable=False),
        sa.Column("sample_rate", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_by_key_id", sa.BigInteger(), nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "sample_rate > 0 AND sample_rate <= 1", name=op.f("ck_shadow_runs_sample_rate")
        ),
        sa.CheckConstraint("status IN ('running', 'stopped')", name=op.f("ck_shadow_runs_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_runs")),
    )
    with op.batch_alter_table("shadow_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_shadow_runs_candidate_version"), ["candidate_version"], unique=False
        )
        batch_op.create_index(
            "uq_shadow_runs_one_running",
            ["status"],
            unique=True,
            sqlite_where=sa.text("status = 'running'"),
            postgresql_where=sa.text("status = 'running'"),
        )

    op.create_table(
        "shadow_results",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("run_id", _ID, nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["shadow_runs.id"],
            name=op.f("fk_shadow_results_run_id_shadow_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_results")),
        sa.UniqueConstraint("run_id", "worker", name="uq_shadow_results_run_worker"),
    )
    with op.batch_alter_table("shadow_results", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_shadow_results_run_id"), ["run_id"], unique=False)

    _seed_history()


def _seed_history() -> None:
    """The one switch a pre-0003 database remembers, as the first activation event."""
    conn = op.get_bind()
    row = conn.execute(
        sa.text("SELECT active_version, previous_version FROM registry_state WHERE id = 1")
    ).first()
    if row is None or row[0] is None or row[1] is None:
        return
    events = sa.table(
        "audit_events",
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("action", sa.String()),
        sa.column("actor", sa.String()),
        sa.column("subject", sa.String()),
        sa.column("from_value", sa.String()),
        sa.column("to_value", sa.String()),
        sa.column("reason", sa.Text()),
        sa.column("details", sa.JSON()),
    )
    op.bulk_insert(
        events,
        [
            {
                "created_at": datetime.now(UTC),
                "action": "activate",
                "actor": "migration 0003",
                "subject": row[0],
                "from_value": row[1],
                "to_value": row[0],
                "reason": "the last switch recorded before the audit history existed",
                "details": {},
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("shadow_results")
    op.drop_table("shadow_runs")
    op.drop_table("audit_events")
