"""Switching the active transformer: activate, roll back, deactivate, delete.

Each switch is one transaction that takes the registry lock first, flips the active row (a
partial unique index allows at most one), records the audit event, stops shadow runs and bumps
``registry_state.generation``, which every worker polls (:mod:`service.registry.holder`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import STATE_ACTIVE, STATE_INACTIVE, TransformerVersion, utcnow
from service.db.registry_state import (
    bump_generation,
    lock_registry_state,
    registry_row,
    registry_state,
)
from service.errors import Conflict
from service.registry import audit, shadow_store
from service.registry.audit import LOCAL_ACTOR, Actor
from service.registry.records import StoredTransformer, version_row
from service.registry.validation import validate_stored_version

if TYPE_CHECKING:
    from service.settings import ServiceSettings

log = logging.getLogger(__name__)


def _switch_active(session: Session, *, target_version: str | None) -> str | None:
    """Within the caller's transaction: make ``target_version`` the only active row (None: no
    active row). Returns the previously active version.

    The registry lock is taken BEFORE anything is read, so a concurrent activation, deletion or
    rollback runs entirely before or after this one; every UPDATE's row count is checked. The
    partial unique index stays the last line of defence.
    """
    lock_registry_state(session)
    state = registry_row(session)
    target = version_row(session, target_version) if target_version is not None else None
    current = session.scalars(
        select(TransformerVersion).where(TransformerVersion.state == STATE_ACTIVE)
    ).first()
    previous = current.version if current is not None else None
    if current is not None and (target is None or current.id != target.id):
        # Deactivate first and flush: the index must never see two active rows.
        _update_one(
            session,
            update(TransformerVersion)
            .where(TransformerVersion.id == current.id)
            .values(state=STATE_INACTIVE),
            what=f"deactivating {current.version}",
        )
        session.flush()
    if target is not None:
        _update_one(
            session,
            update(TransformerVersion)
            .where(TransformerVersion.id == target.id)
            .values(state=STATE_ACTIVE, activated_at=utcnow()),
            what=f"activating {target.version}",
        )
    if previous != (target.version if target is not None else None):
        state.previous_version = previous
    state.active_version = target.version if target is not None else None
    state.updated_at = utcnow()
    session.flush()
    bump_generation(session)
    return previous


def _update_one(session: Session, statement: Any, *, what: str) -> None:
    """Run an UPDATE that must change exactly one row (Conflict otherwise: retry)."""
    result = session.execute(statement)
    if result.rowcount != 1:
        raise Conflict(f"the registry changed while {what}; retry")


def activate_transformer(
    *,
    session_factory: sessionmaker[Session],
    settings: ServiceSettings,
    version: str,
    actor: Actor = LOCAL_ACTOR,
    reason: str | None = None,
) -> StoredTransformer:
    """Make ``version`` the active transformer (atomic; bumps the generation; audited).

    The file is re-validated against the current backbone and gallery before the switch.
    Activating the active version again is a no-op (no generation bump, no event).
    """
    with session_factory() as session:
        row = version_row(session, version)
        if row.state == STATE_ACTIVE:
            return StoredTransformer.from_row(row, directory=settings.transformers_path)
    validate_stored_version(session_factory=session_factory, settings=settings, version=version)
    return _commit_switch(
        session_factory=session_factory,
        settings=settings,
        version=version,
        action=audit.ACTION_ACTIVATE,
        actor=actor,
        reason=reason,
    )


def _commit_switch(
    *,
    session_factory: sessionmaker[Session],
    settings: ServiceSettings,
    version: str,
    action: str,
    actor: Actor,
    reason: str | None,
    expected_target: str | None = None,
) -> StoredTransformer:
    """One transaction: switch to ``version``, record the event, stop shadow runs (their
    baseline is gone), point ``previous_version`` at the new rollback target.

    ``expected_target`` (rollback): the history must still name ``version`` once the registry
    row is locked, else another change won the race (409, retry).
    """
    with session_factory() as session:
        try:
            lock_registry_state(session)  # first: then everything read is current
            if expected_target is not None:
                active = session.scalars(
                    select(TransformerVersion.version).where(
                        TransformerVersion.state == STATE_ACTIVE
                    )
                ).first()
                if audit.rollback_target(session, active=active) != expected_target:
                    raise Conflict("the activation history changed meanwhile; retry the rollback")
            previous = _switch_active(session, target_version=version)
            details = shadow_store.summary_for_promotion(session, version=version)
            audit.record_event(
                session,
                action=action,
                actor=actor,
                subject=version,
                from_value=previous,
                to_value=version,
                reason=reason,
                details={"shadow": details} if details else None,
            )
            shadow_store.stop_running(session, reason=f"{action} of {version}", actor=actor)
            _point_previous_at_rollback_target(session, active=version)
            session.commit()
        except IntegrityError as exc:
            session.rollback()
            raise Conflict("another activation happened at the same time; retry") from exc
        except Exception:
            session.rollback()
            raise
        log.info("%s: transformer %s -> %s (%s)", action, previous, version, actor.label)
        # Re-read, not refresh: the active row cannot be deleted, so it is there.
        session.expire_all()
        row = version_row(session, version)
        return StoredTransformer.from_row(row, directory=settings.transformers_path)


def _point_previous_at_rollback_target(session: Session, *, active: str | None) -> None:
    """``registry_state.previous_version`` = what a rollback would re-activate now."""
    state = registry_row(session)
    state.previous_version = audit.rollback_target(session, active=active)


def rollback_transformer(
    *,
    session_factory: sessionmaker[Session],
    settings: ServiceSettings,
    actor: Actor = LOCAL_ACTOR,
    reason: str | None = None,
) -> StoredTransformer:
    """Re-activate the version before the current one in the activation history (a stack:
    three rollbacks after activating A, B, C, D give C, B, A). Conflict when nothing is older."""
    with session_factory() as session:
        active = registry_state(session=session).active_version
        target = audit.rollback_target(session, active=active)
    if target is None:
        raise Conflict(
            "nothing older to roll back to: the activation history holds no earlier version"
            + (f" than {active}" if active else "")
        )
    validate_stored_version(session_factory=session_factory, settings=settings, version=target)
    return _commit_switch(
        session_factory=session_factory,
        settings=settings,
        version=target,
        action=audit.ACTION_ROLLBACK,
        actor=actor,
        reason=reason,
        expected_target=target,
    )


def deactivate_transformer(
    *,
    session_factory: sessionmaker[Session],
    settings: ServiceSettings,
    actor: Actor = LOCAL_ACTOR,
    reason: str | None = None,
) -> str | None:
    """Leave no version active (identify then answers 503). Returns the version deactivated."""
    with session_factory() as session:
        previous = _switch_active(session, target_version=None)
        if previous is not None:
            audit.record_event(
                session,
                action=audit.ACTION_DEACTIVATE,
                actor=actor,
                subject=previous,
                from_value=previous,
                reason=reason,
            )
            shadow_store.stop_running(session, reason="no active version", actor=actor)
        _point_previous_at_rollback_target(session, active=None)
        session.commit()
    return previous


def delete_transformer(
    *,
    session_factory: sessionmaker[Session],
    settings: ServiceSettings,
    version: str,
    actor: Actor = LOCAL_ACTOR,
    reason: str | None = None,
) -> None:
    """Delete an inactive version and its file (audited; it leaves the rollback history and
    any shadow run of it stops). Conflict for the active version."""
    with session_factory() as session:
        lock_registry_state(session)  # first: an activation of this version waits, or ran
        row = version_row(session, version)
        if row.state == STATE_ACTIVE:
            raise Conflict(f"{version} is the active transformer; activate another one first")
        path = settings.transformers_path / row.file_name
        shadow_store.stop_running(
            session, reason=f"candidate {version} deleted", actor=actor, candidate=version
        )
        session.delete(row)
        audit.record_event(
            session,
            action=audit.ACTION_DELETE,
            actor=actor,
            subject=version,
            from_value=version,
            reason=reason,
        )
        active = registry_state(session=session).active_version
        _point_previous_at_rollback_target(session, active=active)
        session.commit()
    path.unlink(missing_ok=True)  # after the commit: a crash leaves an orphan file, not a row
