"""The identify request's identity lookup: face ids -> (identity id, external id, name).

One SQLAlchemy Core statement on a pooled connection, built once (its compiled form is cached):
no ORM session, no ``Identity`` objects, only the three columns the reply carries. The ORM path
(:func:`service.identities.identities_for_faces`) cost ~6% of the server's CPU per image under
load (docs/service.md, "Where the time goes"). SQL stays the source of truth: a face deleted or
an identity renamed since the search is seen by the next request, on every replica.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, bindparam, select

from service.db.models import Face, Identity
from service.pipeline_types import GalleryHit

_HITS = (
    select(Face.id, Face.identity_id, Identity.external_id, Identity.name)
    .join(Identity, Identity.id == Face.identity_id)
    .where(Face.id.in_(bindparam("face_ids", expanding=True)))
)


def gallery_hits(engine: Engine, face_ids: Sequence[int]) -> dict[int, GalleryHit]:
    """Per known face id its :class:`GalleryHit` (ids no longer in SQL are absent)."""
    wanted = sorted({int(i) for i in face_ids})
    if not wanted:
        return {}
    with engine.connect() as connection:
        rows = connection.execute(_HITS, {"face_ids": wanted}).all()
    return {
        int(face_id): GalleryHit(
            face_id=int(face_id),
            identity_id=int(identity_id),
            external_id=external_id,
            name=name,
        )
        for face_id, identity_id, external_id, name in rows
    }
