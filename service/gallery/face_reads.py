"""Reading an identity's stored vectors back (verify, compressed-index re-scoring)."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import OLD_SPACE_SOURCES, Face, Identity
from service.errors import NotFound
from service.gallery.store import gallery_dim, vector_from_bytes


def face_vectors_by_id(*, session: Session, face_ids: np.ndarray) -> dict[int, np.ndarray]:
    """Stored vectors of ``face_ids`` (absent ids: deleted meanwhile), in one query."""
    wanted = sorted({int(i) for i in np.asarray(face_ids).reshape(-1)})
    if not wanted:
        return {}
    rows = session.execute(select(Face.id, Face.vector, Face.dim).where(Face.id.in_(wanted)))
    return {int(i): vector_from_bytes(v, d) for i, v, d in rows.all()}


def face_vectors(*, session: Session, identity_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Face ids (int64 [m]) and stored old-space vectors (float32 [m, d], L2-normalised): the
    identity's legacy and mapped faces (its native ones live in another space).

    NotFound for an unknown identity; an identity without faces gives empty arrays.
    """
    if session.get(Identity, identity_id) is None:
        raise NotFound(f"identity {identity_id} not found")
    rows = session.execute(
        select(Face.id, Face.vector, Face.dim)
        .where(Face.identity_id == identity_id, Face.source.in_(OLD_SPACE_SOURCES))
        .order_by(Face.id)
    ).all()
    if not rows:
        dim = gallery_dim(session=session) or 0
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    ids = np.asarray([r[0] for r in rows], dtype=np.int64)
    return ids, np.vstack([vector_from_bytes(r[1], r[2]) for r in rows])
