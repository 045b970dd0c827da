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


def _best_rows(hits: SpaceHits, identities: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Row of each identity's best score (the first row when the hits are sorted best first,
    as every vector store returns them)."""
    scores = np.asarray(hits.scores)
    if scores.size < 2 or bool(np.all(scores[:-1] >= scores[1:])):
        return first
    rows = np.empty_like(first)
    for j, identity in enumerate(identities.tolist()):
        mine = np.flatnonzero(np.asarray(hits.identities) == identity)
        rows[j] = mine[np.argmax(scores[mine])]
    return rows


def best_per_identity(hits: SpaceHits) -> dict[int, tuple[float, int]]:
    """identity -> (best score, its face id) in one space."""
    best: dict[int, tuple[float, int]] = {}
    for face_id, score, identity in zip(hits.face_ids, hits.scores, hits.identities, strict=True):
        identity = int(identity)
        if identity < 0 or int(face_id) < 0:
            continue
        if identity not in best or float(score) > best[identity][0]:
            best[identity] = (float(score), int(face_id))
    return best


def to_log10_far(score: float, calibration: ScoreCalibration | None) -> float:
    """A raw score as log10 FAR (no calibration: ``-score``, which keeps the raw order)."""
    if calibration is None:
        return -float(score)
    return float(calibration.log10_far_of(score))


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
    evidence: dict[int, dict[str, tuple[float, int, float]]] = {}
    for hits in per_space:
        calibration = calibrations.get(hits.space) or reference
        identities, first = np.unique(np.asarray(hits.identities), return_index=True)
        keep = identities >= 0
        identities, first = identities[keep], first[keep]
        if first.size == 0:
            continue
        better = _best_rows(hits, identities, first)  # each identity's best face
        scores = np.asarray(hits.scores, np.float64)[better]
        log_fars = (-scores if calibration is None else calibration.log10_far_of(scores)).tolist()
        for identity, row, score, log_far in zip(
            identities.tolist(), better.tolist(), scores.tolist(), log_fars, strict=True
        ):
            evidence.setdefault(identity, {})[hits.space] = (
                score,
                int(hits.face_ids[row]),
                log_far,
            )
    ranked = []
    counts = vectors_of or {}
    for identity, spaces in evidence.items():
        space, (score, face_id, log_far) = min(
            spaces.items(), key=lambda item: (item[1][2], -item[1][0])
        )
        looks = counts.get(identity, 1)
        if looks > 1 and calibrations.get(space, reference) is not None:
            log_far = min(log_far + math.log10(looks), 0.0)
        ranked.append((log_far, -score, identity, space, face_id))
    ranked.sort()
    reference_spaces = {h.space for h in per_space if h.kind == KIND_MAPPED}
    out: list[FusedCandidate] = []
    for log_far, neg_score, identity, space, face_id in ranked[:top_k]:
        score = -neg_score
        if reference is None:
            score = -log_far
        elif space not in reference_spaces:
            score = mapped_scale_score(log_far, reference, raw=score)
        spaces = {s: v[0] for s, v in evidence[identity].items()}
        out.append(FusedCandidate(identity, face_id, log_far, score, space, spaces))
    return out


def mapped_scale_score(log10_far: float, reference: ScoreCalibration, *, raw: float) -> float:
    """A log-FAR as the mapped score with that FAR. Inside the FAR = 1 region every score has
    the same FAR: the raw score is kept, below the region's top (it carries no evidence)."""
    if log10_far >= 0.0:
        return min(float(raw), float(reference.score[0]))
    return reference.score_at_far(10.0**log10_far)
