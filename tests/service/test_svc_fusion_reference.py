"""The cross-space search and fusion (service.migration.search / .fusion, made cheap for
issue 10's latency target) against references kept as they were before: ``_before_fuse`` is
the earlier NumPy-and-dict implementation, verbatim, and the search is checked against each
store searched on its own with the identities looked up per space. Random data with ties,
unsorted hits, unknown identities, vector counts and every calibration fallback: the results
must be identical (exact floats, the same order), not close."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.decision import (
    MIN_LOG10_FAR,
    SCORE_FORWARD,
    SCORE_NATIVE,
    ScoreCalibration,
    fit_calibration,
)
from service.gallery.engines.faiss import FaissStore
from service.migration.fusion import (
    KIND_MAPPED,
    KIND_NATIVE,
    FusedCandidate,
    SpaceHits,
    best_per_identity,
    fuse,
    mapped_scale_scores,
)
from service.migration.search import SpaceQuery, search_spaces


def _calibration(kind: str, space: str, *, loc: float, seed: int) -> ScoreCalibration:
    scores = np.random.default_rng(seed).normal(loc, 0.1, 5000)
    return fit_calibration(scores, score_kind=kind, space=space, queries="plain")


MAPPED = _calibration(SCORE_FORWARD, "old", loc=0.5, seed=1)
NATIVE = _calibration(SCORE_NATIVE, "new", loc=0.1, seed=2)


# -- the implementation before the rewrite (verbatim but for names) ---------------------------
def _before_log10_far_of(c: ScoreCalibration, score: float | np.ndarray) -> np.ndarray:
    s = np.asarray(score, dtype=np.float64)
    knots_s, knots_f = np.asarray(c.score), np.asarray(c.log10_far)
    inside = np.interp(s, knots_s, knots_f, left=0.0, right=knots_f[-1])
    tail = knots_f[-1] - (s - knots_s[-1]) / (c.tail_scale * math.log(10.0))
    out = np.where(s > knots_s[-1], tail, inside)
    return np.clip(out, MIN_LOG10_FAR, 0.0)


def _before_score_at_far(c: ScoreCalibration, far: float) -> float:
    target = max(math.log10(far), MIN_LOG10_FAR)
    knots_f, knots_s = np.asarray(c.log10_far), np.asarray(c.score)
    if target >= knots_f[-1]:
        return float(np.interp(target, knots_f[::-1], knots_s[::-1]))
    return float(knots_s[-1] + (knots_f[-1] - target) * c.tail_scale * math.log(10.0))


def _before_mapped_scale_score(
    log10_far: float, reference: ScoreCalibration, *, raw: float
) -> float:
    if log10_far >= 0.0:
        return min(float(raw), float(reference.score[0]))
    return _before_score_at_far(reference, 10.0**log10_far)


def _before_best_rows(hits: SpaceHits, identities: np.ndarray, first: np.ndarray) -> np.ndarray:
    scores = np.asarray(hits.scores)
    if scores.size < 2 or bool(np.all(scores[:-1] >= scores[1:])):
        return first
    rows = np.empty_like(first)
    for j, identity in enumerate(identities.tolist()):
        mine = np.flatnonzero(np.asarray(hits.identities) == identity)
        rows[j] = mine[np.argmax(scores[mine])]
    return rows


def _before_fuse(per_space, *, calibrations, reference, top_k, vectors_of=None):  # type: ignore[no-untyped-def]
    evidence: dict[int, dict[str, tuple[float, int, float]]] = {}
    for hits in per_space:
        calibration = calibrations.get(hits.space) or reference
        identities, first = np.unique(np.asarray(hits.identities), return_index=True)
        keep = identities >= 0
        identities, first = identities[keep], first[keep]
        if first.size == 0:
            continue
        better = _before_best_rows(hits, identities, first)
        scores = np.asarray(hits.scores, np.float64)[better]
        log_fars = (
            -scores if calibration is None else _before_log10_far_of(calibration, scores)
        ).tolist()
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
    out = []
    for log_far, neg_score, identity, space, face_id in ranked[:top_k]:
        score = -neg_score
        if reference is None:
            score = -log_far
        elif space not in reference_spaces:
            score = _before_mapped_scale_score(log_far, reference, raw=score)
        spaces = {s: v[0] for s, v in evidence[identity].items()}
        out.append(FusedCandidate(identity, face_id, log_far, score, space, spaces))
    return out


def _before_best_per_identity(hits: SpaceHits) -> dict[int, tuple[float, int]]:
    best: dict[int, tuple[float, int]] = {}
    for face_id, score, identity in zip(hits.face_ids, hits.scores, hits.identities, strict=True):
        identity = int(identity)
        if identity < 0 or int(face_id) < 0:
            continue
        if identity not in best or float(score) > best[identity][0]:
            best[identity] = (float(score), int(face_id))
    return best


# -- random hits ---------------------------------------------------------------------------
def _random_hits(rng: np.random.Generator, space: str, kind: str) -> SpaceHits:
    """0-40 hits; scores float32 and usually sorted best first (as stores return them), now
    and then shuffled; coarse values so that ties occur within and across spaces; some
    identities unknown (-1), some face ids -1 (an empty slot)."""
    n = int(rng.choice([0, 1, 2, 5, 20, 40]))
    scores = np.round(rng.uniform(-0.2, 1.0, n), 2).astype(np.float32)
    scores = np.sort(scores)[::-1] if rng.random() < 0.8 else scores
    identities = rng.integers(-1, 15, n)
    face_ids = rng.permutation(10_000)[:n].astype(np.int64)
    if n and rng.random() < 0.2:
        face_ids[rng.integers(0, n)] = -1
    return SpaceHits(space, kind, face_ids, scores, identities.astype(np.int64))


SETUPS = {
    "both calibrated": ({"old": MAPPED, "new": NATIVE, "third": NATIVE}, MAPPED),
    "native falls back": ({"old": MAPPED, "new": None, "third": None}, MAPPED),
    "absent native": ({"old": MAPPED}, MAPPED),
    "no calibration": ({"old": None, "new": None, "third": None}, None),
}


@pytest.mark.parametrize("setup", sorted(SETUPS))
@pytest.mark.parametrize("seed", range(6))
def test_fuse_is_identical_to_the_implementation_before(setup: str, seed: int) -> None:
    calibrations, reference = SETUPS[setup]
    rng = np.random.default_rng(seed)
    differing = 0
    for trial in range(60):
        spaces = [("old", KIND_MAPPED), ("new", KIND_NATIVE), ("third", KIND_NATIVE)]
        per_space = [_random_hits(rng, s, k) for s, k in spaces[: int(rng.integers(1, 4))]]
        counts = {int(i): int(rng.integers(1, 12)) for i in rng.integers(0, 15, 8)}
        top_k = int(rng.choice([1, 2, 5, 50]))
        for vectors_of in (None, counts):
            kwargs = {"calibrations": calibrations, "reference": reference, "top_k": top_k}
            got = fuse(per_space, vectors_of=vectors_of, **kwargs)
            want = _before_fuse(per_space, vectors_of=vectors_of, **kwargs)
            assert got == want, (setup, seed, trial)
            assert [list(c.spaces) for c in got] == [list(c.spaces) for c in want]
            differing += int(vectors_of is not None and got != fuse(per_space, **kwargs))
    if reference is not None:  # the counts do change results, so the comparison can fail
        assert differing > 0


@pytest.mark.parametrize("calibration", [MAPPED, NATIVE])
def test_calibration_conversions_are_identical_to_the_implementation_before(
    calibration: ScoreCalibration,
) -> None:
    rng = np.random.default_rng(9)
    knots = np.asarray(calibration.score)
    scores = np.concatenate(
        [rng.uniform(-1.0, 1.5, 2000), knots, knots + 1e-12, [knots[-1] + 5.0, -3.0]]
    )
    np.testing.assert_array_equal(
        calibration.log10_far_of(scores), _before_log10_far_of(calibration, scores)
    )
    assert [float(calibration.log10_far_of(s)) for s in scores[:50]] == [
        float(_before_log10_far_of(calibration, s)) for s in scores[:50]
    ]
    at_knots = 10.0 ** np.asarray(calibration.log10_far)
    fars = np.concatenate([10.0 ** rng.uniform(-17.0, 0.0, 2000), at_knots, [1.0, 1e-16]])
    assert [calibration.score_at_far(f) for f in fars] == [
        _before_score_at_far(calibration, f) for f in fars
    ]
    log_fars = [*rng.uniform(-16.0, 0.5, 300).tolist(), 0.0, -15.0]
    raws = rng.uniform(-1.0, 1.0, len(log_fars)).tolist()
    assert mapped_scale_scores(log_fars, calibration, raws) == [
        _before_mapped_scale_score(v, calibration, raw=r)
        for v, r in zip(log_fars, raws, strict=True)
    ]


@pytest.mark.parametrize("seed", range(4))
def test_best_per_identity_is_identical_to_the_implementation_before(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    for _ in range(100):
        hits = _random_hits(rng, "old", KIND_MAPPED)
        got = best_per_identity(hits)
        assert got == _before_best_per_identity(hits)
        assert list(got.items()) == list(_before_best_per_identity(hits).items())


def test_search_spaces_matches_each_store_searched_alone() -> None:
    """Several queries, two FAISS stores, one identity lookup for the whole batch; every
    space's hits as its store returns them, with the identities a per-space lookup gives."""
    rng = np.random.default_rng(5)
    old, new = rng.standard_normal((2, 300, 16)).astype(np.float32)
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    stores = {"old": FaissStore(dim=16, space="old"), "new": FaissStore(dim=16, space="new")}
    stores["old"].add(ids=np.arange(300), vectors=old)
    stores["new"].add(ids=np.arange(1000, 1200), vectors=new[:200])
    identity = np.full(2000, -1, np.int64)
    identity[:300] = rng.integers(0, 40, 300)
    identity[1000:1200] = rng.integers(0, 40, 200)
    identity[rng.integers(0, 2000, 50)] = -1  # deleted since the search
    calls: list[int] = []

    def identity_of(ids: np.ndarray) -> np.ndarray:
        calls.append(ids.size)
        return identity[ids]

    query = SpaceQuery(mapped=old[:4] + 0.1, native={"new": new[:4] + 0.1, "absent": new[:4]})
    got = search_spaces(query, old_space="old", stores=stores, identity_of=identity_of, top_k=3)
    assert len(calls) == 1 and len(got) == 4
    for i, per_space in enumerate(got):
        assert [(h.space, h.kind) for h in per_space] == [("old", "mapped"), ("new", "native")]
        for hits, vectors in zip(per_space, (query.mapped, query.native["new"]), strict=True):
            (alone,) = stores[hits.space].search(vectors[i : i + 1], k=12)
            np.testing.assert_array_equal(hits.face_ids, alone.ids)
            np.testing.assert_array_equal(hits.scores, alone.scores)
            np.testing.assert_array_equal(hits.identities, identity[alone.ids])
            brute = (old if hits.space == "old" else new[:200]) @ vectors[i]
            offset = 0 if hits.space == "old" else 1000
            np.testing.assert_array_equal(hits.face_ids, np.argsort(-brute)[:12] + offset)
    empty = {"old": stores["old"], "new": FaissStore(dim=16, space="new")}
    only_old = search_spaces(query, old_space="old", stores=empty, identity_of=identity_of, top_k=3)
    assert [[h.space for h in hits] for hits in only_old] == [["old"]] * 4
