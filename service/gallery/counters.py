"""Gallery counts in O(1): sharded counter rows (``gallery_counters``).

Every write transaction adds its deltas to one random slot of each counter, so concurrent
writers rarely touch the same row (one counter row would serialise them on PostgreSQL, as the
old ``gallery_revision`` row did); a reader sums at most ``SLOTS`` rows per counter.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.db.models import GalleryCounter

SLOTS = 16
IDENTITIES = "identities"
FACES = "faces"


SPACE_PREFIX = "space."


def face_source_counter(source: str) -> str:
    return f"{FACES}.{source}"


def face_space_counter(space: str) -> str:
    """Native faces of one embedding space (a model id; cut at the column's 64 characters)."""
    return f"{SPACE_PREFIX}{space}"[:64]


def add_counts(session: Session, deltas: Mapping[str, int]) -> None:
    """Add ``deltas`` (counter name -> change) in the caller's transaction."""
    rows = [
        {"name": name, "slot": random.randrange(SLOTS), "value": int(delta)}
        for name, delta in deltas.items()
        if delta
    ]
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for row in rows:
        stmt = insert(GalleryCounter).values(**row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name", "slot"],
            set_={"value": GalleryCounter.value + stmt.excluded.value},
        )
        session.execute(stmt)


def read_counts(session: Session) -> dict[str, int]:
    """Every counter's total (one query over at most SLOTS rows per counter)."""
    rows = session.execute(
        select(GalleryCounter.name, func.sum(GalleryCounter.value)).group_by(GalleryCounter.name)
    ).all()
    return {str(name): int(total or 0) for name, total in rows}


def face_deltas(sources: list[str], *, sign: int, spaces: list[str]) -> dict[str, int]:
    """Counter deltas for faces of ``sources`` in ``spaces`` (one each) added (sign +1) or
    removed (-1). Native faces count per space too (legacy and mapped are the old space)."""
    deltas: dict[str, int] = {FACES: sign * len(sources)}
    native = [p for s, p in zip(sources, spaces, strict=True) if s not in ("legacy", "mapped")]
    for key in [face_source_counter(s) for s in sources] + [face_space_counter(s) for s in native]:
        deltas[key] = deltas.get(key, 0) + sign
    return deltas


def space_counts(counts: dict[str, int]) -> dict[str, int]:
    """Faces per space from :func:`read_counts`' result (the counter names' space part)."""
    return {k[len(SPACE_PREFIX) :]: v for k, v in counts.items() if k.startswith(SPACE_PREFIX)}
