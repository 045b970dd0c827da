"""The audit history: every activation, rollback, deactivation, delete, key change, shadow run
(and, with progressive migration, capture undo), with who (API key id), when, from -> to and why.

Events are written in the SAME transaction as the change they describe, so the history can never
disagree with the registry. Rollback walks this history as a stack (:func:`rollback_target`):

- ``activate`` from F to T pushes F (when there was one); so does ``deactivate`` from F;
- ``rollback`` to T pops the stack down to (and including) T;
- ``delete`` of V removes V from the stack.

Activate A, B, C, then roll back three times: C -> B -> A -> 409 "nothing older", never the
toggle C -> B -> C. Versions that were rolled back away from are not pushed (like an undo stack).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.models import AuditEvent

ACTION_UPLOAD = "upload"
ACTION_ACTIVATE = "activate"
ACTION_ROLLBACK = "rollback"
ACTION_DEACTIVATE = "deactivate"
ACTION_DELETE = "delete"
ACTION_KEY_CREATE = "key-create"
ACTION_KEY_REVOKE = "key-revoke"
ACTION_KEY_BOOTSTRAP = "key-bootstrap"
ACTION_SHADOW_START = "shadow-start"
ACTION_SHADOW_STOP = "shadow-stop"
# Reserved for the progressive-migration work (undo of captured faces).
ACTION_CAPTURE_UNDO = "capture-undo"
ACTIONS = (
    ACTION_UPLOAD,
    ACTION_ACTIVATE,
    ACTION_ROLLBACK,
    ACTION_DEACTIVATE,
    ACTION_DELETE,
    ACTION_KEY_CREATE,
    ACTION_KEY_REVOKE,
    ACTION_KEY_BOOTSTRAP,
    ACTION_SHADOW_START,
    ACTION_SHADOW_STOP,
    ACTION_CAPTURE_UNDO,
)
# The events that move the active transformer; their replay is the rollback stack.
TRANSITIONS = (ACTION_ACTIVATE, ACTION_ROLLBACK, ACTION_DEACTIVATE, ACTION_DELETE)
MAX_REASON_LENGTH = 2000


@dataclass(frozen=True)
class Actor:
    """Who made a change: an API key (id + label) or a local command (no key)."""

    key_id: int | None
    label: str

    @classmethod
    def for_key(cls, *, key_id: int, name: str | None) -> Actor:
        return cls(key_id=key_id, label=f"key {key_id}" + (f" ({name})" if name else ""))


# The CLI works on the database directly: no key, the operator's shell is the authority.
LOCAL_ACTOR = Actor(key_id=None, label="local command (facebridge CLI)")
SYSTEM_ACTOR = Actor(key_id=None, label="service start-up")


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    action: str
    actor_key_id: int | None
    actor: str
    subject: str | None
    from_value: str | None
    to_value: str | None
    reason: str | None
    details: dict[str, Any]

    @classmethod
    def from_row(cls, row: AuditEvent) -> AuditRecord:
        return cls(
            id=int(row.id),
            at=row.created_at,
            action=row.action,
            actor_key_id=None if row.actor_key_id is None else int(row.actor_key_id),
            actor=row.actor,
            subject=row.subject,
            from_value=row.from_value,
            to_value=row.to_value,
            reason=row.reason,
            details=dict(row.details or {}),
        )


def record_event(
    session: Session,
    *,
    action: str,
    actor: Actor,
    subject: str | None = None,
    from_value: str | None = None,
    to_value: str | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one event to the caller's transaction (the caller commits it with the change)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    row = AuditEvent(
        action=action,
        actor_key_id=actor.key_id,
        actor=actor.label[:255],
        subject=subject,
        from_value=from_value,
        to_value=to_value,
        reason=(reason.strip()[:MAX_REASON_LENGTH] or None) if reason else None,
        details=dict(details or {}),
    )
    session.add(row)
    session.flush()
    return row


def list_events(
    *,
    session: Session,
    limit: int = 50,
    offset: int = 0,
    action: str | None = None,
    subject: str | None = None,
) -> tuple[list[AuditRecord], int]:
    """Newest first, with the total count of matching events."""
    where = []
    if action is not None:
        where.append(AuditEvent.action == action)
    if subject is not None:
        where.append(AuditEvent.subject == subject)
    total = session.scalar(select(func.count()).select_from(AuditEvent).where(*where)) or 0
    rows = session.scalars(
        select(AuditEvent).where(*where).order_by(AuditEvent.id.desc()).limit(limit).offset(offset)
    ).all()
    return [AuditRecord.from_row(r) for r in rows], int(total)


def replay_stack(events: list[tuple[str, str | None, str | None, str | None]]) -> list[str]:
    """The rollback stack (oldest first) after ``(action, subject, from, to)`` events in order."""
    stack: list[str] = []
    for action, subject, from_value, to_value in events:
        if action in (ACTION_ACTIVATE, ACTION_DEACTIVATE):
            if from_value is not None and from_value != to_value:
                stack.append(from_value)
        elif action == ACTION_ROLLBACK and to_value is not None:
            while stack:
                if stack.pop() == to_value:
                    break
        elif action == ACTION_DELETE and subject is not None:
            stack = [v for v in stack if v != subject]
    return stack


def rollback_stack(session: Session) -> list[str]:
    """The current rollback stack, oldest first, from the recorded transitions."""
    rows = session.execute(
        select(AuditEvent.action, AuditEvent.subject, AuditEvent.from_value, AuditEvent.to_value)
        .where(AuditEvent.action.in_(TRANSITIONS))
        .order_by(AuditEvent.id)
    ).all()
    return replay_stack([tuple(r) for r in rows])  # type: ignore[misc]


def rollback_target(session: Session, *, active: str | None) -> str | None:
    """The version a rollback re-activates: the top of the stack that is not ``active``."""
    for version in reversed(rollback_stack(session)):
        if version != active:
            return version
    return None
