"""Identities and their faces (gallery vectors in the old model's space, or native vectors in a
backbone's own space: ``faces.space``).

Writes go SQL first, the vector store second: a face is committed together with its entry in the
face change log, then added to this process's store; a deletion likewise. A crash in between is
repaired from the log (``service.gallery.sync``), which is also how other replicas learn of it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from service.db.models import FACE_SOURCES, Face, Identity
from service.errors import Conflict, InvalidInput, NotFound
from service.gallery.changes import record_face_changes
from service.gallery.counters import IDENTITIES, add_counts, face_deltas
from service.gallery.engines.base import VectorStore
from service.gallery.spaces import old_space, space_dim
from service.gallery.store import (
    claim_gallery_dim,
    content_hash,
    gallery_dim,
    normalize_gallery_vectors,
    vector_bytes,
)

if TYPE_CHECKING:
    from service.settings import ServiceSettings

FaceSource = Literal["legacy", "mapped", "native", "captured"]
MAX_PAGE = 1000


class _Unset(enum.Enum):
    UNSET = "UNSET"


UNSET = _Unset.UNSET
"""Marker for "leave this field as it is" in :func:`update_identity`."""


@dataclass(frozen=True)
class IdentityInfo:
    id: int
    external_id: str | None
    name: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    face_count: int | None = None

    @classmethod
    def from_row(cls, row: Identity, *, face_count: int | None = None) -> IdentityInfo:
        return cls(
            id=int(row.id),
            external_id=row.external_id,
            name=row.name,
            metadata=dict(row.attributes or {}),
            created_at=row.created_at,
            updated_at=row.updated_at,
            face_count=face_count,
        )


@dataclass(frozen=True)
class FaceInfo:
    id: int
    identity_id: int
    dim: int
    source: str
    transformer_version: str | None
    origin: str | None
    created_at: datetime
    space: str = ""

    @classmethod
    def from_row(cls, row: Face) -> FaceInfo:
        return cls(
            id=int(row.id),
            identity_id=int(row.identity_id),
            dim=int(row.dim),
            source=row.source,
            transformer_version=row.transformer_version,
            origin=row.origin,
            created_at=row.created_at,
            space=row.space,
        )


@dataclass(frozen=True)
class Page:
    items: list[IdentityInfo]
    total: int
    limit: int
    offset: int
    extra: dict[str, Any] = field(default_factory=dict)


def _clean(text: str | None, what: str) -> str | None:
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    if len(text) > 255:
        raise InvalidInput(f"{what} longer than 255 characters")
    return text


def _identity_row(session: Session, identity_id: int) -> Identity:
    row = session.get(Identity, identity_id)
    if row is None:
        raise NotFound(f"identity {identity_id} not found")
    return row


def _face_counts(session: Session, identity_ids: Sequence[int]) -> dict[int, int]:
    if not identity_ids:
        return {}
    rows = session.execute(
        select(Face.identity_id, func.count())
        .where(Face.identity_id.in_(list(identity_ids)))
        .group_by(Face.identity_id)
    ).all()
    return {int(i): int(c) for i, c in rows}


def _commit(session: Session, *, what: str) -> None:
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"{what} conflicts with an existing record") from exc
    except StaleDataError as exc:  # deleted by a concurrent request since it was read
        session.rollback()
        raise NotFound(f"{what} was deleted meanwhile") from exc


def _flush(session: Session, *, what: str) -> None:
    """Flush now so a constraint violation is a Conflict here, not a 500 from a later query."""
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"{what} conflicts with an existing record") from exc


# ---------------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------------
def create_identity(
    *,
    session: Session,
    name: str | None = None,
    external_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> IdentityInfo:
    """A new identity. Conflict when ``external_id`` is taken."""
    external_id = _clean(external_id, "external_id")
    if external_id is not None and session.scalar(
        select(Identity.id).where(Identity.external_id == external_id)
    ):
        raise Conflict(f"external_id {external_id!r} already exists")
    row = Identity(
        name=_clean(name, "name"), external_id=external_id, attributes=dict(metadata or {})
    )
    session.add(row)
    _flush(session, what=f"identity {external_id!r}")
    add_counts(session, {IDENTITIES: 1})
    _commit(session, what=f"identity {external_id!r}")
    return IdentityInfo.from_row(row, face_count=0)


def get_identity(*, session: Session, identity_id: int) -> IdentityInfo:
    row = _identity_row(session, identity_id)
    return IdentityInfo.from_row(row, face_count=_face_counts(session, [row.id]).get(row.id, 0))


def get_identity_by_external_id(*, session: Session, external_id: str) -> IdentityInfo:
    row = session.scalars(select(Identity).where(Identity.external_id == external_id)).first()
    if row is None:
        raise NotFound(f"identity with external_id {external_id!r} not found")
    return IdentityInfo.from_row(row, face_count=_face_counts(session, [row.id]).get(row.id, 0))


def list_identities(
    *,
    session: Session,
    limit: int = 50,
    offset: int = 0,
    external_id: str | None = None,
    name: str | None = None,
) -> Page:
    """A page of identities by id; ``external_id`` exact, ``name`` case-insensitive substring."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
    if offset < 0:
        raise InvalidInput("offset must be >= 0")
    conditions = []
    if external_id is not None:
        conditions.append(Identity.external_id == external_id)
    if name:
        escaped = name.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(func.lower(Identity.name).like(f"%{escaped}%", escape="\\"))
    total = session.scalar(select(func.count()).select_from(Identity).where(*conditions)) or 0
    rows = session.scalars(
        select(Identity).where(*conditions).order_by(Identity.id).limit(limit).offset(offset)
    ).all()
    counts = _face_counts(session, [r.id for r in rows])
    items = [IdentityInfo.from_row(r, face_count=counts.get(r.id, 0)) for r in rows]
    return Page(items=items, total=int(total), limit=limit, offset=offset)


def update_identity(
    *,
    session: Session,
    identity_id: int,
    name: str | _Unset | None = UNSET,
    external_id: str | _Unset | None = UNSET,
    metadata: dict[str, Any] | _Unset | None = UNSET,
) -> IdentityInfo:
    """Change the fields given (``UNSET`` leaves one as is; None clears it)."""
    row = _identity_row(session, identity_id)
    if name is not UNSET:
        row.name = _clean(name, "name")
    if external_id is not UNSET:
        new_ext = _clean(external_id, "external_id")
        if new_ext is not None and new_ext != row.external_id:
            taken = session.scalar(select(Identity.id).where(Identity.external_id == new_ext))
            if taken is not None:
                raise Conflict(f"external_id {new_ext!r} already exists")
        row.external_id = new_ext
    if metadata is not UNSET:
        row.attributes = dict(metadata or {})
    _commit(session, what=f"identity {identity_id}")
    return get_identity(session=session, identity_id=identity_id)


def delete_identity(*, session: Session, index: VectorStore | None, identity_id: int) -> int:
    """Delete an identity and its faces (SQL commit, then the store). Returns faces removed."""
    row = _identity_row(session, identity_id)
    faces = session.execute(
        select(Face.id, Face.source, Face.space).where(Face.identity_id == identity_id)
    ).all()
    face_ids = [int(f) for f, _, _ in faces]
    session.delete(row)
    record_face_changes(session, removed=face_ids, spaces={int(f): s for f, _, s in faces})
    deltas = face_deltas([s for _, s, _ in faces], sign=-1, spaces=[p for _, _, p in faces])
    add_counts(session, {IDENTITIES: -1, **deltas})
    _commit(session, what=f"identity {identity_id}")
    if index is not None and face_ids:
        index.remove(ids=face_ids)
    return len(face_ids)


def identities_for_faces(*, session: Session, face_ids: Sequence[int]) -> dict[int, IdentityInfo]:
    """Identity of each face id, in one query (unknown ids are absent from the result)."""
    wanted = sorted({int(i) for i in face_ids})
    if not wanted:
        return {}
    rows = session.execute(select(Face.id, Identity).join(Identity).where(Face.id.in_(wanted)))
    return {int(face_id): IdentityInfo.from_row(identity) for face_id, identity in rows.all()}


# ---------------------------------------------------------------------------------------------
# Faces
# ---------------------------------------------------------------------------------------------
def add_face(
    *,
    session: Session,
    index: VectorStore | None,
    identity_id: int,
    vector: np.ndarray,
    source: FaceSource = "mapped",
    transformer_version: str | None = None,
    origin: str | None = None,
    settings: ServiceSettings | None = None,
) -> FaceInfo:
    """Store one old-space vector for an identity; see :func:`add_faces`."""
    normalized_input = np.asarray(vector)
    if normalized_input.ndim == 2 and normalized_input.shape[0] != 1:
        raise InvalidInput(f"add_face takes one vector, got {normalized_input.shape[0]}")
    (face,) = add_faces(
        session=session,
        index=index,
        identity_id=identity_id,
        vectors=normalized_input.reshape(1, -1),
        source=source,
        transformer_version=transformer_version,
        origin=origin,
        settings=settings,
    )
    return face


def add_faces(
    *,
    session: Session,
    index: VectorStore | None,
    identity_id: int,
    vectors: np.ndarray,
    source: FaceSource = "mapped",
    transformer_version: str | None = None,
    origin: str | None = None,
    settings: ServiceSettings | None = None,
    space: str | None = None,
    commit: bool = True,
) -> list[FaceInfo]:
    """Store vectors [n, d] of one space (None: the old model's) for an identity (normalised
    here) in ONE transaction with their change-log entries, then add them to ``index`` (that
    space's store): every face is stored or none is (``commit`` False: the caller commits and
    adds them to its store).

    ``source="mapped"`` (enrolled through the transformer) needs ``transformer_version``.
    A vector the identity already has (or one repeated in ``vectors``) is a Conflict.
    """
    if source not in FACE_SOURCES:
        raise InvalidInput(f"source must be one of {FACE_SOURCES}")
    if source == "mapped" and not transformer_version:
        raise InvalidInput("a mapped face needs the transformer version that produced it")
    _identity_row(session, identity_id)
    old = old_space(session=session, settings=settings)
    space = space or old
    dim = gallery_dim(session=session, settings=settings) if space == old else None
    normalized = normalize_gallery_vectors(
        np.asarray(vectors), dim=dim if space == old else space_dim(session, space, old=old)
    )
    if normalized.shape[0] == 0:
        raise InvalidInput("no vectors to add")
    stored = [vector_bytes(v) for v in normalized]
    digests = [content_hash(b) for b in stored]
    if len(set(digests)) != len(digests):
        raise Conflict("the same face vector appears more than once in one enrolment")
    duplicate = session.scalar(
        select(Face.id).where(Face.identity_id == identity_id, Face.content_hash.in_(digests))
    )
    if duplicate is not None:
        raise Conflict(f"identity {identity_id} already has this vector (face {duplicate})")
    if space == old:
        claim_gallery_dim(session=session, dim=int(normalized.shape[1]), settings=settings)
    rows = [
        Face(
            identity_id=identity_id,
            vector=blob,
            dim=int(normalized.shape[1]),
            content_hash=digest,
            source=source,
            transformer_version=transformer_version,
            origin=origin,
            space=space,
        )
        for blob, digest in zip(stored, digests, strict=True)
    ]
    session.add_all(rows)
    what = f"face(s) of identity {identity_id}"
    _flush(session, what=what)  # e.g. the same vector enrolled concurrently: 409, not 500
    record_face_changes(
        session, added=[int(r.id) for r in rows], spaces={r.id: space for r in rows}
    )
    add_counts(session, face_deltas([source] * len(rows), sign=1, spaces=[space] * len(rows)))
    if not commit:
        _flush(session, what=what)
        return [FaceInfo.from_row(r) for r in rows]
    _commit(session, what=what)
    if index is not None:
        index.add(ids=[int(r.id) for r in rows], vectors=normalized)
    return [FaceInfo.from_row(r) for r in rows]


def list_faces(*, session: Session, identity_id: int) -> list[FaceInfo]:
    _identity_row(session, identity_id)
    rows = session.scalars(select(Face).where(Face.identity_id == identity_id).order_by(Face.id))
    return [FaceInfo.from_row(r) for r in rows]


def delete_face(
    *, session: Session, index: VectorStore | None, identity_id: int, face_id: int
) -> None:
    """Delete one face of an identity (SQL commit, then the store). NotFound for unknown ids."""
    _identity_row(session, identity_id)
    row = session.get(Face, face_id)
    if row is None or int(row.identity_id) != int(identity_id):
        raise NotFound(f"face {face_id} of identity {identity_id} not found")
    source, space = row.source, row.space
    session.delete(row)
    record_face_changes(session, removed=[face_id], spaces={face_id: space})
    add_counts(session, face_deltas([source], sign=-1, spaces=[space]))
    _commit(session, what=f"face {face_id}")
    if index is not None:
        index.remove(ids=[face_id])
