"""What a shadow run measures, as pure Python: per-image decisions in, mergeable counters out.

One :class:`Decision` per image and per version: the top-1 identity and score, and the identity
the reply would name as its match (None = no match). :class:`ShadowStats` accumulates, for the
active version (``active``) and the candidate (``candidate``) on the same queries:

- top-1 agreement: both have a top-1 and it is the same identity;
- decision changes: the match (identity or none) differs, split into match -> no match,
  no match -> match and match -> another identity; per image and per reply (a reply changes
  when any of its images does);
- the distribution of each version's top-1 scores (a fixed histogram over [-1, 1], so workers'
  statistics add up exactly; quantiles are read from it to within one bin, 0.02).

Workers each keep their own stats and store them as JSON; a reader merges them (:meth:`merge`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SCORE_BINS = 100
SCORE_LOW, SCORE_HIGH = -1.0, 1.0
BIN_WIDTH = (SCORE_HIGH - SCORE_LOW) / SCORE_BINS
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
ROLES = ("active", "candidate")
# The plain counters of ShadowStats (summed by merge, stored as JSON as they are).
COUNTERS = (
    "requests",
    "images",
    "dropped",
    "skipped",
    "errors",
    "top1_compared",
    "top1_agree",
    "decision_changed",
    "replies_changed",
)
CHANGE_KINDS = ("match_to_no_match", "no_match_to_match", "match_to_other")


@dataclass(frozen=True)
class Decision:
    """One image's outcome under one version."""

    top1_identity: int | None
    top1_score: float | None
    match_identity: int | None


def score_bin(score: float) -> int:
    """Histogram bin of a score; scores outside [-1, 1] land in the end bins."""
    index = math.floor((score - SCORE_LOW) / BIN_WIDTH)
    return min(max(index, 0), SCORE_BINS - 1)


def change_kind(active: Decision, candidate: Decision) -> str | None:
    """How the reply's decision would change with the candidate (None: it would not)."""
    if active.match_identity == candidate.match_identity:
        return None
    if candidate.match_identity is None:
        return "match_to_no_match"
    if active.match_identity is None:
        return "no_match_to_match"
    return "match_to_other"


@dataclass
class ScoreHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)
    total: float = 0.0  # sum of scores (the exact mean)

    @property
    def n(self) -> int:
        return sum(self.counts)

    def add(self, score: float) -> None:
        self.counts[score_bin(score)] += 1
        self.total += float(score)

    def merge(self, other: ScoreHistogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def quantile(self, q: float) -> float | None:
        """The q-quantile, read as the upper edge of the bin where the cumulative count
        reaches ``q * n`` (exact to within one bin)."""
        n = self.n
        if n == 0:
            return None
        target, running = q * n, 0
        for index, count in enumerate(self.counts):
            running += count
            if running >= target and count:
                return round(SCORE_LOW + (index + 1) * BIN_WIDTH, 6)
        return SCORE_HIGH

    def summary(self) -> dict[str, Any]:
        n = self.n
        return {
            "n": n,
            "mean": None if n == 0 else round(self.total / n, 6),
            "quantiles": {f"p{round(q * 100):02d}": self.quantile(q) for q in QUANTILES},
            "histogram": {
                "low": SCORE_LOW,
                "high": SCORE_HIGH,
                "bins": SCORE_BINS,
                "counts": list(self.counts),
            },
        }


@dataclass
class ShadowStats:
    """Counters of one shadow run (one worker's, or several merged)."""

    requests: int = 0  # sampled replies compared
    images: int = 0  # images in them
    dropped: int = 0  # sampled replies dropped: the shadow queue was full
    skipped: int = 0  # sampled replies served by another version than the run's baseline
    errors: int = 0  # candidate runs that failed (logged; replies never affected)
    top1_compared: int = 0  # images where both versions had a top-1 candidate
    top1_agree: int = 0
    decision_changed: int = 0
    replies_changed: int = 0
    changes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHANGE_KINDS, 0))
    matches: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLES, 0))
    scores: dict[str, ScoreHistogram] = field(
        default_factory=lambda: {role: ScoreHistogram() for role in ROLES}
    )

    def add_reply(self, *, active: Sequence[Decision], candidate: Sequence[Decision]) -> None:
        """One reply: the active version's decisions and the candidate's, image by image."""
        if len(active) != len(candidate):
            raise ValueError(f"{len(active)} active decisions vs {len(candidate)} candidate ones")
        self.requests += 1
        changed_reply = False
        for mine, theirs in zip(active, candidate, strict=True):
            self.images += 1
            for role, decision in (("active", mine), ("candidate", theirs)):
                if decision.top1_score is not None:
                    self.scores[role].add(decision.top1_score)
                if decision.match_identity is not None:
                    self.matches[role] += 1
            if mine.top1_identity is not None and theirs.top1_identity is not None:
                self.top1_compared += 1
                self.top1_agree += int(mine.top1_identity == theirs.top1_identity)
            kind = change_kind(mine, theirs)
            if kind is not None:
                self.decision_changed += 1
                self.changes[kind] += 1
                changed_reply = True
        self.replies_changed += int(changed_reply)

    def merge(self, other: ShadowStats) -> None:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for kind in CHANGE_KINDS:
            self.changes[kind] += other.changes.get(kind, 0)
        for role in ROLES:
            self.matches[role] += other.matches.get(role, 0)
            self.scores[role].merge(other.scores[role])

    # -- JSON (what a worker stores) -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in COUNTERS},
            "changes": dict(self.changes),
            "matches": dict(self.matches),
            "scores": {
                role: {"counts": list(h.counts), "total": h.total}
                for role, h in self.scores.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShadowStats:
        """Tolerant of missing fields (a row written by an older worker counts as zeros)."""
        stats = cls()
        for name in COUNTERS:
            setattr(stats, name, int(data.get(name, 0)))
        for kind in CHANGE_KINDS:
            stats.changes[kind] = int(data.get("changes", {}).get(kind, 0))
        for role in ROLES:
            stats.matches[role] = int(data.get("matches", {}).get(role, 0))
            raw = data.get("scores", {}).get(role, {})
            counts = [int(c) for c in raw.get("counts", [])]
            if len(counts) == SCORE_BINS:
                stats.scores[role] = ScoreHistogram(counts=counts, total=float(raw["total"]))
        return stats

    # -- what the API reports --------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        def ratio(part: int, whole: int) -> float | None:
            return None if whole == 0 else round(part / whole, 6)

        return {
            "requests": self.requests,
            "images": self.images,
            "dropped": self.dropped,
            "skipped": self.skipped,
            "errors": self.errors,
            "top1_agreement": ratio(self.top1_agree, self.top1_compared),
            "top1_compared": self.top1_compared,
            "decision_change_rate": ratio(self.decision_changed, self.images),
            "reply_change_rate": ratio(self.replies_changed, self.requests),
            "decision_changes": {"total": self.decision_changed, **self.changes},
            "match_rate": {role: ratio(self.matches[role], self.images) for role in ROLES},
            "scores": {role: self.scores[role].summary() for role in ROLES},
        }
