"""Captured native vectors in SQL: store one (with its provenance, under the cap), undo them.

A capture is a ``faces`` row (source ``captured``, the backbone's space) plus a
``face_captures`` row (time, request id, fused score, margin, transformer version), committed
with their change-log entries and counters in one transaction, like every other face write; the
caller then refreshes its vector stores from the log (:meth:`GallerySync.refresh`). An undo
deletes the captured faces of one identity and/or of a time window and records who did it in
the audit log (``capture-undo``): the search results are exactly those before the captures.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import Face, FaceCapture
from service.errors import InvalidInput
from service.gallery.changes import record_face_changes
from service.gallery.counters import add_counts, face_deltas
from service.gallery.store import (
    content_hash,
    normalize_gallery_vectors,
    vector_bytes,
    vector_from_bytes,
)
from service.migration.capture import slot_for
from service.registry.audit import ACTION_CAPTURE_UNDO, Actor, record_event

SOURCE_CAPTURED = "captured"
SOURCE_NATIVE = "native"


@dataclass(frozen=True)
class Provenance:
    request_id: str | None
    score: float
    margin: float  # decades of FAR between the top-1 and the second identity
    transformer_version: str | None


@dataclass(frozen=True)
class CaptureResult:
    stored: bool
    face_id: int | None = None
    evicted: int | None = None
    reason: str = "ok"


def _native_rows(
    session: Session, identity_id: int, space: str
) -> list[tuple[int, str, bytes, int]]:
    return [
        (int(i), s, v, int(d))
        for i, s, v, d in session.execute(
            select(Face.id, Face.source, Face.vector, Face.dim)
            .where(
                Face.identity_id == identity_id,
                Face.space == space,
                Face.source.in_((SOURCE_NATIVE, SOURCE_CAPTURED)),
            )
            .order_by(Face.id)
        ).all()
    ]


def delete_faces(session: Session, rows: list[tuple[int, str, str]]) -> None:
    """Delete faces (id, source, space) with their change-log entries and counters (no commit;
    their ``face_captures`` rows go with them: ON DELETE CASCADE, and explicitly for SQLite)."""
    ids = [face_id for face_id, _, _ in rows]
    if not ids:
        return
    session.execute(FaceCapture.__table__.delete().where(FaceCapture.face_id.in_(ids)))
    session.execute(Face.__table__.delete().where(Face.id.in_(ids)))
    record_face_changes(session, removed=ids, spaces={f: s for f, _, s in rows})
    add_counts(
        session,
        face_deltas([src for _, src, _ in rows], sign=-1, spaces=[s for _, _, s in rows]),
    )


def store_capture(
    session: Session,
    *,
    identity_id: int,
    vector: np.ndarray,
    space: str,
    provenance: Provenance,
    max_native: int,
) -> CaptureResult:
    """Keep ``vector`` (a query's native vector) for ``identity_id`` under the cap; commits."""
    (unit,) = normalize_gallery_vectors(np.asarray(vector).reshape(1, -1), dim=None)
    rows = _native_rows(session, identity_id, space)
    if rows and rows[0][3] != unit.shape[0]:
        raise InvalidInput(f"space {space} holds {rows[0][3]}-d vectors, got {unit.shape[0]}")
    blob = vector_bytes(unit)
    digest = content_hash(blob)
    existing = np.asarray([vector_from_bytes(v, d) for _, _, v, d in rows], np.float32)
    existing = existing.reshape(len(rows), unit.shape[0])
    evictable = np.asarray([s == SOURCE_CAPTURED for _, s, _, _ in rows], bool)
    if any(content_hash(v) == digest for _, _, v, _ in rows):
        return CaptureResult(False, reason="already held")
    keep, evict = slot_for(unit, existing, evictable, max_native=max_native)
    if not keep:
        return CaptureResult(False, reason="more redundant than every kept vector")
    evicted = None
    if evict is not None:
        evicted = rows[evict][0]
        delete_faces(session, [(evicted, SOURCE_CAPTURED, space)])
    face = Face(
        identity_id=identity_id,
        vector=blob,
        dim=int(unit.shape[0]),
        content_hash=digest,
        source=SOURCE_CAPTURED,
        space=space,
        transformer_version=provenance.transformer_version,
        origin=f"capture:{provenance.request_id or '-'}"[:1024],
    )
    session.add(face)
    session.flush()
    session.add(
        FaceCapture(
            face_id=face.id,
            identity_id=identity_id,
            request_id=(provenance.request_id or None) and provenance.request_id[:64],
            score=float(provenance.score),
            margin=float(provenance.margin),
            transformer_version=provenance.transformer_version,
        )
    )
    record_face_changes(session, added=[int(face.id)], spaces={int(face.id): space})
    add_counts(session, face_deltas([SOURCE_CAPTURED], sign=1, spaces=[space]))
    session.commit()
    return CaptureResult(True, face_id=int(face.id), evicted=evicted)


def undo_captures(
    session: Session,
    *,
    actor: Actor,
    identity_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    transformer_version: str | None = None,
    reason: str | None = None,
) -> list[int]:
    """Delete the captured faces that match every filter given (at least one); commits with an
    audit event. Returns the deleted face ids (the caller refreshes its stores)."""
    if identity_id is None and since is None and until is None and transformer_version is None:
        raise InvalidInput("undo needs an identity, a time window or a transformer version")
    if since is not None and until is not None and since > until:
        raise InvalidInput("undo: since is after until")
    stmt = select(Face.id, Face.source, Face.space).join(
        FaceCapture, FaceCapture.face_id == Face.id
    )
    if identity_id is not None:
        stmt = stmt.where(Face.identity_id == identity_id)
    if since is not None:
        stmt = stmt.where(FaceCapture.created_at >= since)
    if until is not None:
        stmt = stmt.where(FaceCapture.created_at < until)
    if transformer_version is not None:
        stmt = stmt.where(FaceCapture.transformer_version == transformer_version)
    rows = [(int(i), src, sp) for i, src, sp in session.execute(stmt.order_by(Face.id)).all()]
    delete_faces(session, rows)
    details = {
        "identity_id": identity_id,
        "since": None if since is None else since.isoformat(),
        "until": None if until is None else until.isoformat(),
        "transformer_version": transformer_version,
        "faces_removed": len(rows),
    }
    record_event(
        session,
        action=ACTION_CAPTURE_UNDO,
        actor=actor,
        subject=None if identity_id is None else f"identity {identity_id}",
        reason=reason,
        details=details,
    )
    session.commit()
    return [face_id for face_id, _, _ in rows]
