"""The capture rule: when is an identify confident enough to keep the query's native vector?

A capture adds a vector to an identity for ever (until undone), so the rule is much stricter
than ``match``. All of it must hold for the top-1 candidate of one image:

1. **Calibrated strength**: its fused evidence (:mod:`service.migration.fusion`) reaches the
   per-comparison FAR that gives ``fpir x 10^margin_decades`` over the ``N`` vectors searched:
   ``log10 FAR <= log10 far_for_fpir(fpir x 10^margin, N)``.
2. **Margin over the second identity**: the second identity's fused log-FAR is at least
   ``margin_decades`` decades worse (absent second: FAR 1). For a stranger, the best and the
   second-best of N independent impostor FARs have a ratio uniform on (0, 1), independent of
   the second one: the margin passes with probability ``10^-margin``. The rule's modelled FPIR
   is therefore ``fpir`` (default 0.3%, vs 1% for ``match``).
3. **Agreement**: in every space where the top-1 identity has evidence, no other identity
   scores higher there (mapped and native evidence point at the same person).
4. **No repeated batch**: an identity that is the top-1 of two or more images of one request
   gets nothing from that request (one person's photo repeated, or a burst of one face).

Then the cap: an identity keeps at most ``max_native`` captured vectors; a full identity
replaces its most redundant captured vector (the one with the highest cosine to the identity's
other native vectors, the newcomer included) when the newcomer is less redundant; on a tie the
vector already held stays and the capture is skipped.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.decision import far_for_fpir
from service.migration.fusion import FusedCandidate, SpaceHits, best_per_identity

DEFAULT_CAPTURE_FPIR = 0.003
DEFAULT_MARGIN_DECADES = 1.5
DEFAULT_MAX_NATIVE = 8
MAX_STRENGTH_FPIR = 0.5


@dataclass(frozen=True)
class CaptureRule:
    fpir: float = DEFAULT_CAPTURE_FPIR
    margin_decades: float = DEFAULT_MARGIN_DECADES
    max_native: int = DEFAULT_MAX_NATIVE
    require_agreement: bool = True

    @property
    def strength_fpir(self) -> float:
        """The FPIR of the strength test alone (the margin test divides it by 10^margin)."""
        return min(self.fpir * 10.0**self.margin_decades, MAX_STRENGTH_FPIR)

    def strength_limit(self, gallery_faces: int) -> float:
        """The highest fused log10 FAR a capture may have at this gallery size."""
        return math.log10(far_for_fpir(self.strength_fpir, max(int(gallery_faces), 1)))


@dataclass(frozen=True)
class CaptureVerdict:
    capture: bool
    reason: str  # "ok" or why not
    identity_id: int | None = None
    log10_far: float = 0.0
    margin_decades: float = 0.0


def judge(
    candidates: Sequence[FusedCandidate],
    per_space: Sequence[SpaceHits],
    *,
    rule: CaptureRule,
    gallery_faces: int,
) -> CaptureVerdict:
    """Rules 1-3 for one image's fused candidates (best first) and its per-space hits."""
    if not candidates:
        return CaptureVerdict(False, "no candidate")
    top = candidates[0]
    second = candidates[1].log10_far if len(candidates) > 1 else 0.0
    margin = second - top.log10_far
    base = {"identity_id": top.identity_id, "log10_far": top.log10_far, "margin_decades": margin}
    if top.log10_far > rule.strength_limit(gallery_faces):
        return CaptureVerdict(False, "too weak", **base)
    if margin < rule.margin_decades:
        return CaptureVerdict(False, "margin", **base)
    if rule.require_agreement:
        for hits in per_space:
            best = best_per_identity(hits)
            mine = best.get(top.identity_id)
            if mine is not None and any(
                s > mine[0] for i, (s, _) in best.items() if i != top.identity_id
            ):
                return CaptureVerdict(False, f"disagreement in {hits.space}", **base)
    return CaptureVerdict(True, "ok", **base)


def repeated_identities(verdicts: Sequence[CaptureVerdict]) -> set[int]:
    """Identities that are the capture candidate of two or more images of one request."""
    counts = Counter(v.identity_id for v in verdicts if v.identity_id is not None and v.capture)
    return {identity for identity, n in counts.items() if n > 1}


def batch_verdicts(verdicts: Sequence[CaptureVerdict]) -> list[CaptureVerdict]:
    """Rule 4 applied to one request's verdicts."""
    repeated = repeated_identities(verdicts)
    return [
        CaptureVerdict(False, "repeated in batch", v.identity_id, v.log10_far, v.margin_decades)
        if v.capture and v.identity_id in repeated
        else v
        for v in verdicts
    ]


def slot_for(
    new: np.ndarray, existing: np.ndarray, evictable: np.ndarray, *, max_native: int
) -> tuple[bool, int | None]:
    """(keep the new vector?, index into ``existing`` to evict or None) under the cap.

    ``existing`` [m, d]: the identity's native vectors (unit); ``evictable`` [m] bool: captured
    ones (enrolled native vectors are never evicted; only captured ones count to the cap)."""
    captured = int(np.count_nonzero(evictable))
    if captured < max_native:
        return True, None
    pool = np.vstack([existing, new[None, :]])
    sims = pool @ pool.T
    np.fill_diagonal(sims, -np.inf)
    redundancy = sims.max(axis=1)
    candidates = np.flatnonzero(evictable)
    worst = int(candidates[np.argmax(redundancy[candidates])])
    if redundancy[-1] >= redundancy[worst]:  # the newcomer is (one of) the most redundant
        return False, None
    return True, worst
