"""Evidence from several embedding spaces, fused per identity on ONE calibrated scale.

A query is searched in every space it reaches: the old model's space through the transformer
(mapped scores) and the backbone's own space (native new/new scores). The two kinds of score
have different impostor distributions, so raw cosines cannot be compared: each score becomes
its ``log10 FAR`` through its own space's calibration (:class:`service.decision.ScoreCalibration`,
carried by the transformer file: the mapped score's and, since issue 10, the native one's). An
identity's fused evidence is its best (lowest) log-FAR over the spaces; that is the Bonferroni
view of several looks, which the open-set rule already counts: the gallery size ``N`` is every
vector searched, in all spaces. The fused log-FAR is reported back on the mapped score's scale
(``score``), so the existing ``match`` threshold (service.decision) applies to it unchanged.

Fallbacks (documented in docs/service.md): a file without a native calibration scores native
cosines through the mapped calibration; a file without any calibration compares raw cosines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from service.decision import ScoreCalibration

KIND_MAPPED = "mapped"
KIND_NATIVE = "native"


@dataclass(frozen=True)
class SpaceHits:
    """One query's hits in one space: face ids and scores (best first), their identities."""

    space: str
    kind: str  # KIND_MAPPED | KIND_NATIVE
    face_ids: np.ndarray
    scores: np.ndarray
    identities: np.ndarray  # identity id per face id (-1: unknown / deleted)


@dataclass(frozen=True)
class FusedCandidate:
    identity_id: int
    face_id: int  # the best face, in the space that gave the best evidence
    log10_far: float  # fused evidence: the lowest log10 FAR over the spaces
    score: float  # the fused evidence on the mapped score's scale
    space: str  # where the best evidence came from
    spaces: dict[str, float] = field(default_factory=dict)  # space -> best raw score


def _ints(values: np.ndarray) -> list[int]:
    return np.asarray(values, np.int64).tolist()


def _best_rows(identities: list[int], scores: list[float]) -> dict[int, int]:
    """identity -> the row of its best score in one space's hits, the first of equal bests (so
    the first row when the hits are sorted best first, as every store returns them); unknown
    identities (-1) left out. Plain lists: a space brings a few dozen hits, and a Python loop
    over them costs less than NumPy's per-call overhead (bench/migration_latency.py)."""
    best: dict[int, int] = {}
    for row, identity in enumerate(identities):
        if identity < 0:
            continue
        held = best.get(identity)
        if held is None or scores[row] > scores[held]:
            best[identity] = row
    return best


def best_per_identity(hits: SpaceHits) -> dict[int, tuple[float, int]]:
    """identity -> (best score, its face id) in one space."""
    scores = np.asarray(hits.scores, np.float64).tolist()
    faces = _ints(hits.face_ids)
    identities = [i if f >= 0 else -1 for i, f in zip(_ints(hits.identities), faces, strict=True)]
    return {i: (scores[row], faces[row]) for i, row in _best_rows(identities, scores).items()}


def to_log10_far(score: float, calibration: ScoreCalibration | None) -> float:
    """A raw score as log10 FAR (no calibration: ``-score``, which keeps the raw order)."""
    if calibration is None:
        return -float(score)
    return float(calibration.log10_far_of(score))


# identity -> space -> (log10 FAR, -score, the space's place among the identity's, space, face)
Evidence = dict[int, dict[str, tuple[float, float, int, str, int]]]


def _evidence(
    per_space: Sequence[SpaceHits],
    calibrations: Mapping[str, ScoreCalibration | None],
    reference: ScoreCalibration | None,
) -> Evidence:
    """Each identity's best evidence in each space (in the order the spaces come), as tuples
    that sort as the fusion ranks: the lowest log-FAR, then the highest score, then the
    first space."""
    evidence: Evidence = {}
    for hits in per_space:
        calibration = calibrations.get(hits.space) or reference
        scores = np.asarray(hits.scores, np.float64).tolist()
        best = _best_rows(_ints(hits.identities), scores)
        if not best:
            continue
        faces, space = _ints(hits.face_ids), hits.space
        raw = [scores[row] for row in best.values()]
        log_fars = (
            [-s for s in raw] if calibration is None else calibration.log10_far_of(raw).tolist()
        )
        for (identity, row), log_far in zip(best.items(), log_fars, strict=True):
            mine = evidence.get(identity)
            if mine is None:
                evidence[identity] = {space: (log_far, -scores[row], 0, space, faces[row])}
                continue
            held = mine.get(space)  # (a space met twice keeps its place, as a dict key does)
            place = len(mine) if held is None else held[2]
            mine[space] = (log_far, -scores[row], place, space, faces[row])
    return evidence


def fuse(
    per_space: Sequence[SpaceHits],
    *,
    calibrations: Mapping[str, ScoreCalibration | None],
    reference: ScoreCalibration | None,
    top_k: int,
    vectors_of: Mapping[int, int] | None = None,
) -> list[FusedCandidate]:
    """Candidates best first, one per identity, ``top_k`` at most.

    ``calibrations``: space -> the calibration of that space's score (None: fall back to
    ``reference``, the mapped score's). ``vectors_of``: identity -> its vectors in all spaces
    (absent: 1); an identity's evidence is its best FAR times that count (the union bound: a
    stranger has that many chances against it), so an identity with many native vectors is
    not favoured. Ranked by fused log-FAR, ties by the score."""
    evidence = _evidence(per_space, calibrations, reference)
    ranked = []
    counts = vectors_of or {}
    for identity, spaces in evidence.items():
        log_far, neg_score, _, space, face_id = min(spaces.values())
        looks = counts.get(identity, 1)
        if looks > 1 and calibrations.get(space, reference) is not None:
            log_far = min(log_far + math.log10(looks), 0.0)
        ranked.append((log_far, neg_score, identity, space, face_id))
    ranked.sort()
    top = ranked[:top_k]
    if reference is None:
        scores = [-log_far for log_far, *_ in top]
    else:
        mapped = {h.space for h in per_space if h.kind == KIND_MAPPED}
        scores = [-neg for _, neg, *_ in top]
        other = [j for j, (_, _, _, space, _) in enumerate(top) if space not in mapped]
        converted = mapped_scale_scores(
            [top[j][0] for j in other], reference, [scores[j] for j in other]
        )
        for j, score in zip(other, converted, strict=True):
            scores[j] = score
    return [
        FusedCandidate(
            identity,
            face_id,
            log_far,
            score,
            space,
            {s: -v[1] for s, v in evidence[identity].items()},
        )
        for (log_far, _, identity, space, face_id), score in zip(top, scores, strict=True)
    ]


def mapped_scale_score(log10_far: float, reference: ScoreCalibration, *, raw: float) -> float:
    """A log-FAR as the mapped score with that FAR. Inside the FAR = 1 region every score has
    the same FAR: the raw score is kept, below the region's top (it carries no evidence)."""
    return mapped_scale_scores([log10_far], reference, [raw])[0]


def mapped_scale_scores(
    log10_fars: Sequence[float], reference: ScoreCalibration, raws: Sequence[float]
) -> list[float]:
    """:func:`mapped_scale_score` of each (log-FAR, raw score), one NumPy pass for them all."""
    inside = [j for j, v in enumerate(log10_fars) if v < 0.0]
    out = [min(float(r), float(reference.score[0])) for r in raws]
    # 10 ** v back through log10: the values score_at_far(10 ** v) gave, to the last bit
    targets = [math.log10(10.0 ** log10_fars[j]) for j in inside]
    for j, score in zip(
        inside, reference.scores_at_log10_far(targets) if inside else [], strict=True
    ):
        out[j] = score
    return out
