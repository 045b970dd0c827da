"""The ``registry_state`` row (id 1), read and written here only.

It holds the counters every worker polls (``generation``: bumped by every activation, deletion
and rollback), the activation memory (``active_version``, ``previous_version``), the gallery's
facts (``gallery_dim``, ``gallery_model_id``) and the change log's compaction mark. The
registry (``service.registry.activation``) and the gallery (``service.gallery``) call the functions
below; neither touches the row otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db.models import REGISTRY_STATE_ID, RegistryState
from service.errors import Conflict


@dataclass(frozen=True)
class RegistryStateInfo:
    generation: int
    active_version: str | None
    previous_version: str | None
    gallery_model_id: str | None
    gallery_dim: int | None


def registry_row(session: Session, *, for_update: bool = False) -> RegistryState:
    """The single registry_state row, to change within the caller's transaction (created when a
    database lacks it)."""
    stmt = select(RegistryState).where(RegistryState.id == REGISTRY_STATE_ID)
    if for_update:
        stmt = stmt.with_for_update()
    row = session.scalars(stmt).one_or_none()
    if row is None:
        row = RegistryState(id=REGISTRY_STATE_ID, generation=0)
        session.add(row)
        session.flush()
    return row


def registry_state(*, session: Session) -> RegistryStateInfo:
    """The row's values (all empty and generation 0 when the row does not exist yet)."""
    state = session.get(RegistryState, REGISTRY_STATE_ID)
    if state is None:
        return RegistryStateInfo(0, None, None, None, None)
    return RegistryStateInfo(
        generation=int(state.generation),
        active_version=state.active_version,
        previous_version=state.previous_version,
        gallery_model_id=state.gallery_model_id,
        gallery_dim=state.gallery_dim,
    )


def lock_registry_state(session: Session) -> None:
    """Hold the registry_state row's write lock until the session's transaction ends.

    Taken FIRST in a transaction that reads and changes registry state (activation, deletion,
    rollback). Postgres: a no-op UPDATE locks the row until commit; SQLite: the same UPDATE is
    the transaction's first write, which takes the database's write lock (waiting up to the
    busy timeout). Everything the transaction reads afterwards is current.
    """
    result = session.execute(
        update(RegistryState)
        .where(RegistryState.id == REGISTRY_STATE_ID)
        .values(generation=RegistryState.generation)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]  # a database that lacks the row
        session.add(RegistryState(id=REGISTRY_STATE_ID, generation=0))
        session.flush()


def bump_generation(session: Session) -> None:
    """Increment the generation in SQL (not from a value read earlier: concurrent activations
    never reuse one); Conflict when the row is gone (retry)."""
    result = session.execute(
        update(RegistryState)
        .where(RegistryState.id == REGISTRY_STATE_ID)
        .values(generation=RegistryState.generation + 1)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict("the registry changed while bumping the generation; retry")


def compacted_through(session: Session) -> int:
    """The change log's compaction mark: entries with seq <= it are gone."""
    value = session.scalar(
        select(RegistryState.changes_compacted_through).where(RegistryState.id == REGISTRY_STATE_ID)
    )
    return int(value or 0)


def mark_compacted(session: Session, *, through: int) -> None:
    """Raise the compaction mark to ``through`` (never lowers it)."""
    session.execute(
        update(RegistryState)
        .where(RegistryState.id == REGISTRY_STATE_ID)
        .where(RegistryState.changes_compacted_through < through)
        .values(changes_compacted_through=through)
    )
