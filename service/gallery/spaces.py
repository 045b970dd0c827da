"""Embedding spaces of one gallery: which rows of ``faces`` belong to which vector store.

A face's ``space`` is a model id: the old model's for legacy and mapped rows, a backbone's for
native rows (enrolled through the service or captured from a confident identify). Rows are
routed to a store by their source first: legacy and mapped rows are the old space whatever key
they recorded (``default`` while no old model id was recorded, the id after), so recording the
old model's id later moves nothing; native rows go to their ``space``'s store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.orm import Session

from service.db.models import OLD_SPACE_SOURCES, UNNAMED_OLD_SPACE, Face
from service.errors import ContractError
from service.gallery.counters import face_source_counter, read_counts, space_counts

if TYPE_CHECKING:
    from service.settings import ServiceSettings


def old_space(*, session: Session, settings: ServiceSettings | None) -> str:
    """The key of the old model's space: its model id (``default`` while none is recorded)."""
    from service.gallery.store import gallery_model_id

    return gallery_model_id(session=session, settings=settings) or UNNAMED_OLD_SPACE


def is_native(source: str) -> bool:
    return source not in OLD_SPACE_SOURCES


def in_space(space: str, *, old: str) -> ColumnElement[bool]:
    """SQL filter: the faces of ``space`` (``old``: the old space's key)."""
    if space == old:
        return Face.source.in_(OLD_SPACE_SOURCES)
    return and_(Face.space == space, Face.source.not_in(OLD_SPACE_SOURCES))


def store_space(space: str, source: str, *, old: str) -> str:
    """The store a face of ``space`` and ``source`` lives in."""
    return space if is_native(source) else old


def native_spaces(session: Session) -> list[str]:
    """Every space holding native faces (O(1): the sharded counters)."""
    return sorted(s for s, n in space_counts(read_counts(session)).items() if n > 0)


def space_face_count(session: Session, space: str, *, old: str) -> int:
    """Faces in ``space`` (O(1): the sharded counters)."""
    counts = read_counts(session)
    if space == old:
        return sum(counts.get(face_source_counter(s), 0) for s in OLD_SPACE_SOURCES)
    return space_counts(counts).get(space, 0)


def space_dim(session: Session, space: str, *, old: str) -> int | None:
    """The dimension of a space's stored vectors (None while it has none)."""
    return session.scalar(select(Face.dim).where(in_space(space, old=old)).limit(1))


def record_old_model_id(session: Session, model_id: str) -> None:
    """Record the old model's id (``gallery import --model-id``); ContractError when another
    one is recorded. Rows written before keep ``default``: still the old space."""
    from service.gallery.store import registry_row

    state = registry_row(session)
    if state.gallery_model_id and state.gallery_model_id != model_id:
        raise ContractError(
            f"gallery model id is {state.gallery_model_id!r}; import says {model_id!r}"
        )
    state.gallery_model_id = model_id
