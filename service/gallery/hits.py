"""The identify request's identity lookup: face ids -> (identity id, external id, name).

One SQLAlchemy Core statement on a pooled connection, built once (its compiled form is cached):
no ORM session, no ``Identity`` objects, only the three columns the reply carries. The ORM path
(:func:`service.identities.identities_for_faces`) cost ~6% of the server's CPU per image under
load (docs/service.md, "Where the time goes"). SQL stays the source of truth: a face deleted or
an identity renamed since the search is seen by the next request, on every replica.

:func:`gallery_hits_counted` is the cross-space ranking's lookup (service.migration.live): the
same rows plus each identity's vectors in all spaces (the fusion's union bound), read in the
same statement, so a request makes one SQL round trip for both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sqlalchemy import Engine, bindparam, func, select
from sqlalchemy.orm import aliased

from service.db.models import Face, Identity
from service.pipeline_types import GalleryHit

_HITS = (
    select(Face.id, Face.identity_id, Identity.external_id, Identity.name)
    .join(Identity, Identity.id == Face.identity_id)
    .where(Face.id.in_(bindparam("face_ids", expanding=True)))
)
_OTHER = aliased(Face)
_VECTORS = (  # the identity's faces, every space and source (an index on faces.identity_id)
    select(func.count()).where(_OTHER.identity_id == Face.identity_id).scalar_subquery()
)
_COUNTED = _HITS.add_columns(_VECTORS)


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


def gallery_hits_counted(
    engine: Engine, face_ids: Sequence[int]
) -> tuple[dict[int, GalleryHit], dict[int, int]]:
    """:func:`gallery_hits`, and the vectors (in all spaces) of each of their identities, from
    the same statement."""
    wanted = sorted({int(i) for i in face_ids})
    if not wanted:
        return {}, {}
    with engine.connect() as connection:
        rows = connection.execute(_COUNTED, {"face_ids": wanted}).all()
    hits = {
        int(face_id): GalleryHit(
            face_id=int(face_id), identity_id=int(identity_id), external_id=external_id, name=name
        )
        for face_id, identity_id, external_id, name, _ in rows
    }
    return hits, {int(row[1]): int(row[4]) for row in rows}


def top_identities(
    ranked: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    lookup: Callable[[Sequence[int]], dict[int, GalleryHit]],
    top_k: int,
) -> list[list[tuple[GalleryHit, float]]]:
    """Per query, its best ``top_k`` identities as (the identity's best face's hit, score).

    ``ranked``: per query (face ids, scores) best first (-1 = empty slot). Faces are looked up
    in rank order, only as far as each query needs: the first ``top_k`` of every query in ONE
    lookup, then more only for a query whose faces so far named fewer than ``top_k``
    identities (several faces of one person, or faces deleted since the search). The search
    over-fetches (re-ranking depth 50) but a reply names ``top_k``: looking all of them up cost
    ~3% of the server's CPU per image (docs/service.md, "Where the time goes").
    """
    known: dict[int, GalleryHit | None] = {}
    found: list[list[tuple[GalleryHit, float]]] = [[] for _ in ranked]
    seen: list[set[int]] = [set() for _ in ranked]
    position = [0] * len(ranked)
    open_rows = [row for row, (ids, _) in enumerate(ranked) if len(ids)]
    while open_rows:
        wanted: set[int] = set()
        for row in open_rows:
            ids = ranked[row][0]
            need = top_k - len(found[row])
            wanted.update(int(f) for f in ids[position[row] : position[row] + need] if f >= 0)
        missing = sorted(wanted - known.keys())
        if missing:
            hits = lookup(missing)
            known.update({f: hits.get(f) for f in missing})  # None: deleted since the search
        still_open = []
        for row in open_rows:
            ids, scores = ranked[row]
            need = top_k - len(found[row])
            end = min(position[row] + need, len(ids))
            for j in range(position[row], end):
                hit = known.get(int(ids[j])) if ids[j] >= 0 else None
                if hit is None or hit.identity_id in seen[row]:
                    continue
                seen[row].add(hit.identity_id)
                found[row].append((hit, float(scores[j])))
            position[row] = end
            if len(found[row]) < top_k and end < len(ids):
                still_open.append(row)
        open_rows = still_open
    return found
