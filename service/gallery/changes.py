"""The append-only face change log: writers record every face added or removed in their own
transaction; every replica tails it from the position its index reflects.

PostgreSQL hands out ``seq`` values at insert time, so concurrent writers can COMMIT out of
order (a reader may see seq 11 before seq 10 commits) and rollbacks burn values for ever. A
:class:`ChangeFeed` therefore never jumps over a missing seq: it remembers each gap, re-reads it
on every poll, and gives it up only once no transaction that could still fill it is running,
and a re-read after that still finds it empty. "No longer running" is known two ways, either
suffices: (1) every log writer holds a SHARED advisory lock (per database) from before it takes
a seq until it ends, so when a reader can take that lock EXCLUSIVELY for an instant, every
writer that started before has ended; (2) the gap's horizon (the snapshot's ``xmax`` right after
the read that revealed it) is below the cluster's oldest running transaction (``xmin``); writers
write their face rows first, so they hold a transaction id before they take a seq. On SQLite
writers are serialised and a rollback returns its seq: gaps cannot be in flight there.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, text
from sqlalchemy.orm import Session

from service.db.models import FaceChange, utcnow
from service.db.registry_state import compacted_through, mark_compacted

POLL_BATCH = 10_000  # log rows read per query
# pg_advisory_xact_lock key of the log writers (shared) and the gap resolver (exclusive).
WRITERS_LOCK = 0x66616365_6C6F67
GAP_RANGES_PER_QUERY = 200
COMPACT_BATCH = 100_000


def record_face_changes(
    session: Session,
    *,
    added: Sequence[int] = (),
    removed: Sequence[int] = (),
    spaces: Mapping[int, str] | None = None,
) -> None:
    """Append one log row per face added / removed, in the caller's transaction (after its
    face rows are flushed, so the transaction holds an id before it takes a seq). ``spaces``:
    each face's embedding space, recorded with the entry (replicas route by the face row)."""
    session.flush()
    now = utcnow()
    spaces = spaces or {}

    def row(face_id: int, op: str) -> dict[str, Any]:
        return {"face_id": face_id, "op": op, "created_at": now, "space": spaces.get(face_id)}

    rows = [row(int(i), "add") for i in added] + [row(int(i), "remove") for i in removed]
    if rows:
        if _is_postgres(session):  # held to the end of the transaction (see the module doc)
            session.execute(text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": WRITERS_LOCK})
        session.execute(insert(FaceChange), rows)


def compact_changes(session: Session, *, keep: int) -> int:
    """Delete all but the newest ``keep`` entries (commits); returns how many were deleted.
    Replicas whose position is older rebuild from SQL (they can no longer tail)."""
    high = int(session.scalar(select(func.max(FaceChange.seq))) or 0)
    cutoff = high - keep
    done = compacted_through(session)
    if cutoff <= done:
        return 0
    deleted = 0
    for lo in range(done, cutoff, COMPACT_BATCH):
        hi = min(cutoff, lo + COMPACT_BATCH)
        result = session.execute(
            delete(FaceChange).where(FaceChange.seq > lo, FaceChange.seq <= hi)
        )
        deleted += int(result.rowcount or 0)
    mark_compacted(session, through=cutoff)
    session.commit()
    return deleted


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _snapshot_xmax(session: Session) -> int:
    """PostgreSQL: the first transaction id not yet assigned (0 elsewhere)."""
    if not _is_postgres(session):
        return 0
    return int(session.scalar(text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")))


def _writers_idle(session: Session) -> bool:
    """PostgreSQL: True when no log writer is in a transaction right now (the exclusive
    advisory lock is taken and released at once; a writer waits for it an instant at most)."""
    if not _is_postgres(session):
        return True
    got = bool(session.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": WRITERS_LOCK}))
    if got:
        session.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": WRITERS_LOCK})
    return got


def _snapshot_xmin(session: Session) -> int | None:
    """PostgreSQL: the oldest transaction id still running (None elsewhere: nothing in flight)."""
    if not _is_postgres(session):
        return None
    return int(session.scalar(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")))


@dataclass
class Gap:
    """Missing seqs lo..hi, seen while transactions below ``horizon`` could still fill them."""

    lo: int
    hi: int
    horizon: int
    seen_at: float = field(default_factory=time.monotonic)
    fresh: bool = False  # found by the current poll: the idle check made before it says nothing


class ChangeFeed:
    """A replica's position in the log: every seq <= ``watermark`` is applied or known never to
    exist; ``high`` is the newest applied; ``gaps`` the missing seqs between them."""

    def __init__(self, *, watermark: int = 0, high: int | None = None, gaps: Sequence[Gap] = ()):
        self.watermark = int(watermark)
        self.high = int(watermark if high is None else high)
        self.gaps: list[Gap] = sorted(gaps, key=lambda g: g.lo)

    # -- persistence (index sidecar) -----------------------------------------------------------
    def state(self) -> dict[str, Any]:
        gaps = [[g.lo, g.hi, g.horizon] for g in self.gaps]
        return {"watermark": self.watermark, "high": self.high, "gaps": gaps}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ChangeFeed:
        gaps = [Gap(int(lo), int(hi), int(horizon)) for lo, hi, horizon in state.get("gaps", [])]
        return cls(watermark=int(state["watermark"]), high=int(state["high"]), gaps=gaps)

    @classmethod
    def at_current_position(cls, session: Session) -> ChangeFeed:
        """The position for an index about to be built from SQL: call it BEFORE reading faces.
        Entries up to the newest seq are in what the scan will read, except those of
        transactions still in flight: every missing seq becomes a gap."""
        low = compacted_through(session)
        high = int(session.scalar(select(func.max(FaceChange.seq))) or low)
        horizon = _snapshot_xmax(session)
        gaps: list[Gap] = []
        if _is_postgres(session) and high > low:
            rows = session.execute(
                text(
                    "SELECT seq + 1, next - 1 FROM (SELECT seq, lead(seq) OVER (ORDER BY seq) "
                    "AS next FROM face_changes WHERE seq >= :low) t WHERE next > seq + 1"
                ),
                {"low": low},
            ).all()
            first = session.scalar(select(func.min(FaceChange.seq)).where(FaceChange.seq > low))
            if first is not None and first > low + 1:
                gaps.append(Gap(low + 1, int(first) - 1, horizon))
            gaps += [Gap(int(lo), int(hi), horizon) for lo, hi in rows]
        feed = cls(watermark=high, high=high, gaps=gaps)
        feed._advance_watermark()
        return feed

    # -- reading -------------------------------------------------------------------------------
    def poll(self, session: Session, *, limit: int = POLL_BATCH) -> list[tuple[int, int]]:
        """(seq, face id) of entries not applied yet: late commits into known gaps first, then
        up to ``limit`` new ones. The caller applies them, then the position is theirs."""
        # Both BEFORE re-reading the gaps (see the module doc).
        idle = bool(self.gaps) and _writers_idle(session)
        xmin = _snapshot_xmin(session)
        entries = self._read_gaps(session)
        new = session.execute(
            select(FaceChange.seq, FaceChange.face_id)
            .where(FaceChange.seq > self.high)
            .order_by(FaceChange.seq)
            .limit(limit)
        ).all()
        if new:
            horizon = _snapshot_xmax(session)  # AFTER the read that revealed any new gap
            expected = self.high + 1
            for seq, _ in new:
                if seq > expected:
                    self.gaps.append(Gap(expected, int(seq) - 1, horizon, fresh=True))
                expected = int(seq) + 1
            self.high = int(new[-1][0])
            entries += [(int(s), int(f)) for s, f in new]
        self._give_up_gaps(xmin, idle=idle)
        self._advance_watermark()
        return entries

    def _read_gaps(self, session: Session) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        for start in range(0, len(self.gaps), GAP_RANGES_PER_QUERY):
            part = self.gaps[start : start + GAP_RANGES_PER_QUERY]
            rows = session.execute(
                select(FaceChange.seq, FaceChange.face_id)
                .where(or_(*(FaceChange.seq.between(g.lo, g.hi) for g in part)))
                .order_by(FaceChange.seq)
            ).all()
            found += [(int(s), int(f)) for s, f in rows]
        if found:
            self._fill({s for s, _ in found})
        return found

    def _fill(self, seqs: set[int]) -> None:
        """Split the gaps around seqs that turned up."""
        remaining: list[Gap] = []
        for gap in self.gaps:
            lo = gap.lo
            for seq in sorted(s for s in seqs if gap.lo <= s <= gap.hi):
                if seq > lo:
                    remaining.append(Gap(lo, seq - 1, gap.horizon, gap.seen_at))
                lo = seq + 1
            if lo <= gap.hi:
                remaining.append(Gap(lo, gap.hi, gap.horizon, gap.seen_at))
        self.gaps = remaining

    def _give_up_gaps(self, xmin: int | None, *, idle: bool) -> None:
        """Drop gaps no running transaction can fill any more, as checked before the re-read
        that found them still empty (PostgreSQL: writers idle, or xmin past their horizon;
        SQLite: at once)."""
        kept = []
        for gap in self.gaps:
            done = xmin is None or xmin >= gap.horizon or (idle and not gap.fresh)
            if not done:
                gap.fresh = False
                kept.append(gap)
        self.gaps = kept

    def _advance_watermark(self) -> None:
        self.gaps.sort(key=lambda g: g.lo)
        self.watermark = self.gaps[0].lo - 1 if self.gaps else self.high
