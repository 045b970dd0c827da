"""Migration status: identities and faces per space, coverage, captures per day, undo history.

Faces per space come from the sharded counters (O(1)); identities per space and coverage are
one ``GROUP BY`` over ``faces`` (O(faces), on an indexed column: a status call, not a request);
captures per day are bucketed from ``face_captures`` of the last ``days`` days.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from service.db.models import OLD_SPACE_SOURCES, Face, FaceCapture
from service.gallery.counters import FACES, IDENTITIES, read_counts, space_counts
from service.registry.audit import ACTION_CAPTURE_UNDO, list_events

DEFAULT_DAYS = 30


@dataclass(frozen=True)
class SpaceStatus:
    space: str
    kind: str  # "old" | "native"
    faces: int
    identities: int


@dataclass(frozen=True)
class MigrationStatus:
    identities: int
    faces: int
    spaces: list[SpaceStatus]
    coverage: float  # identities with >= 1 native vector / identities with faces
    identities_with_native: int
    captures_total: int
    captures_per_day: list[dict[str, Any]]  # [{"date": "YYYY-MM-DD", "captures": n}], oldest first
    undo_history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _identities_per_space(session: Session) -> tuple[int, dict[str, int], int, int]:
    """(identities with an old-space face, native space -> identities, identities with faces,
    identities with a native face)."""
    old = session.scalar(
        select(func.count(distinct(Face.identity_id))).where(Face.source.in_(OLD_SPACE_SOURCES))
    )
    native_rows = session.execute(
        select(Face.space, func.count(distinct(Face.identity_id)))
        .where(Face.source.not_in(OLD_SPACE_SOURCES))
        .group_by(Face.space)
    ).all()
    with_faces = session.scalar(select(func.count(distinct(Face.identity_id))))
    with_native = session.scalar(
        select(func.count(distinct(Face.identity_id))).where(Face.source.not_in(OLD_SPACE_SOURCES))
    )
    return (
        int(old or 0),
        {s: int(n) for s, n in native_rows},
        int(with_faces or 0),
        int(with_native or 0),
    )


def captures_per_day(
    session: Session, *, days: int, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Captures still held, per UTC day, for the last ``days`` days (every day listed)."""
    now = now or datetime.now(UTC)
    start = (now - timedelta(days=days - 1)).date()
    since = datetime(start.year, start.month, start.day, tzinfo=UTC)
    counts: dict[str, int] = {}
    stamps = session.scalars(select(FaceCapture.created_at).where(FaceCapture.created_at >= since))
    for stamp in stamps:
        key = stamp.astimezone(UTC).date().isoformat()
        counts[key] = counts.get(key, 0) + 1
    return [
        {
            "date": (start + timedelta(days=i)).isoformat(),
            "captures": counts.get((start + timedelta(days=i)).isoformat(), 0),
        }
        for i in range(days)
    ]


def migration_status(
    session: Session, *, old_space: str, days: int = DEFAULT_DAYS, history: int = 20
) -> MigrationStatus:
    counts = read_counts(session)
    old_faces = sum(int(counts.get(f"{FACES}.{s}", 0)) for s in OLD_SPACE_SOURCES)
    old_ids, native_ids, with_faces, with_native = _identities_per_space(session)
    spaces = [SpaceStatus(old_space, "old", old_faces, old_ids)]
    for space, faces in sorted(space_counts(counts).items()):
        if faces > 0:
            spaces.append(SpaceStatus(space, "native", int(faces), native_ids.get(space, 0)))
    events, _ = list_events(session=session, limit=history, action=ACTION_CAPTURE_UNDO)
    return MigrationStatus(
        identities=int(counts.get(IDENTITIES, 0)),
        faces=int(counts.get(FACES, 0)),
        spaces=spaces,
        coverage=round(with_native / with_faces, 4) if with_faces else 0.0,
        identities_with_native=with_native,
        captures_total=int(session.scalar(select(func.count()).select_from(FaceCapture)) or 0),
        captures_per_day=captures_per_day(session, days=days),
        undo_history=[
            {"at": e.at.isoformat(), "actor": e.actor, "reason": e.reason, **e.details}
            for e in events
        ],
    )
