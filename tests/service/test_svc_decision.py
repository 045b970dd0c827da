"""service.decision: the calibration against brute-force counts on synthetic scores.

The FAR table is checked against the exact survival function of known distributions; the
open-set threshold against brute-force FPIR counts (the best of N independent impostor scores
per search, and real nearest-neighbour searches of random vectors); the contract JSON, the
rules and the live gallery counter as plain functions.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from service.decision import (
    SCORE_FUSED,
    GalleryCount,
    GalleryCounter,
    ScoreCalibration,
    calibrations_from_json,
    calibrations_to_json,
    decide_identify,
    decide_verify,
    estimated_fpir,
    far_for_fpir,
    fit_calibration,
    open_set_threshold,
    pick_calibration,
)
from service.errors import ContractError

RNG_SEED = 20260101


def _fit(scores: np.ndarray, **kw: object) -> ScoreCalibration:
    values = {"score_kind": SCORE_FUSED, "space": "old-m", "queries": "flip-averaged"}
    return fit_calibration(scores, **(values | kw))  # type: ignore[arg-type]


def _laplace_tail(t: float, *, loc: float, scale: float) -> float:
    """P(X >= t) for X ~ Laplace(loc, scale), t >= loc: an exactly exponential upper tail."""
    return 0.5 * math.exp(-(t - loc) / scale)


def test_far_follows_the_exact_survival_function_in_the_table_and_the_tail() -> None:
    rng = np.random.default_rng(RNG_SEED)
    loc, scale = 0.3, 0.04
    calibration = _fit(rng.laplace(loc, scale, 2_000_000))
    # inside the knots (FAR >= 50 / n = 2.5e-5), then the fitted tail (its scale's error grows
    # with the distance from the last knot: 1000 exceedances, ~3% standard error)
    for far, rel in ((1e-1, 0.05), (1e-2, 0.1), (1e-3, 0.2), (1e-4, 0.3), (3e-5, 0.3)):
        t = calibration.score_at_far(far)
        assert _laplace_tail(t, loc=loc, scale=scale) == pytest.approx(far, rel=rel), (far, t)
    for far in (1e-6, 1e-8):
        t = calibration.score_at_far(far)
        assert 1 / 3 < _laplace_tail(t, loc=loc, scale=scale) / far < 3, (far, t)
    for far in (1e-1, 1e-4, 1e-6, 1e-8):
        t = calibration.score_at_far(far)
        assert calibration.far(t) == pytest.approx(far, rel=1e-6)  # far() inverts score_at_far()
    assert calibration.log10_far[-1] == pytest.approx(-4.5)  # knots stop at 50 exceedances
    assert calibration.tail_scale == pytest.approx(scale, rel=0.1)  # the tail's MLE


def test_far_is_monotone_and_clamped() -> None:
    calibration = _fit(np.random.default_rng(1).normal(0.2, 0.1, 50_000))
    grid = np.linspace(-1.0, 1.5, 400)
    far = 10.0 ** calibration.log10_far_of(grid)
    assert np.all(np.diff(far) <= 0) and far[0] == 1.0 and far[-1] > 0.0
    assert calibration.far(-5.0) == 1.0


@pytest.mark.parametrize("gallery_faces", [10, 300, 3000])
def test_threshold_gives_the_target_fpir_against_a_brute_force_count(gallery_faces: int) -> None:
    """Searches whose N impostor comparisons are drawn independently: the realised FPIR at the
    calibrated threshold is the target, within the count's binomial noise."""
    rng = np.random.default_rng(RNG_SEED + gallery_faces)
    calibration = _fit(rng.normal(0.3, 0.08, 2_000_000))  # the calibration's own sample
    target = 0.01
    t = open_set_threshold(calibration=calibration, target_fpir=target, gallery_faces=gallery_faces)
    searches = 6_000_000 // gallery_faces
    best = np.max(rng.normal(0.3, 0.08, (searches, gallery_faces)), axis=1)
    false_matches = int(np.sum(best >= t))
    expected = target * searches
    assert abs(false_matches - expected) <= 4 * math.sqrt(expected) + 0.15 * expected, (
        false_matches,
        expected,
    )
    assert estimated_fpir(
        calibration=calibration, threshold=t, gallery_faces=gallery_faces
    ) == pytest.approx(target, rel=1e-9)


def test_threshold_against_brute_force_nearest_neighbour_searches() -> None:
    """Real top-1 searches: random 'identity' vectors with per-image noise; the calibration
    comes from one population of people, the FPIR is counted on another (the strangers) against
    galleries of two sizes, searched exactly."""
    rng = np.random.default_rng(7)
    dim = 24

    def people(n: int) -> np.ndarray:
        centres = rng.standard_normal((n, dim))
        return centres / np.linalg.norm(centres, axis=1, keepdims=True)

    def image_of(centres: np.ndarray) -> np.ndarray:
        v = centres + 0.35 * rng.standard_normal(centres.shape) / math.sqrt(dim)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    fit_people = people(1500)
    queries, gallery = image_of(np.repeat(fit_people, 2, axis=0)), image_of(fit_people)
    scores = queries @ gallery.T
    other = np.repeat(np.arange(1500), 2)[:, None] != np.arange(1500)[None, :]
    calibration = _fit(scores[other])
    target = 0.05
    for n in (200, 2000):
        t = open_set_threshold(calibration=calibration, target_fpir=target, gallery_faces=n)
        enrolled, strangers = image_of(people(n)), image_of(people(8000))
        best = (strangers @ enrolled.T).max(axis=1)
        realised = float(np.mean(best >= t))
        assert 0.5 * target <= realised <= 2.0 * target, (n, realised)


def test_far_for_fpir_is_the_exact_inverse_and_stable() -> None:
    assert far_for_fpir(0.01, 1) == pytest.approx(0.01)
    for n in (2, 1000, 10**9):
        far = far_for_fpir(0.01, n)
        assert 1.0 - (1.0 - far) ** n == pytest.approx(0.01, rel=1e-4)  # naive: loses digits
    assert far_for_fpir(0.01, 0) == far_for_fpir(0.01, 1)  # an empty gallery: one comparison
    with pytest.raises(ContractError):
        far_for_fpir(0.0, 10)


def test_threshold_rises_with_the_gallery_and_falls_with_the_target() -> None:
    calibration = _fit(np.random.default_rng(3).normal(0.3, 0.08, 200_000))
    sizes = [1, 10, 100, 1_000, 10_000, 100_000]
    ts = [
        open_set_threshold(calibration=calibration, target_fpir=0.01, gallery_faces=n)
        for n in sizes
    ]
    assert all(a < b for a, b in itertools.pairwise(ts))
    loose = open_set_threshold(calibration=calibration, target_fpir=0.1, gallery_faces=1000)
    assert loose < ts[3]


def test_calibration_json_round_trips_and_refuses_broken_data() -> None:
    calibration = _fit(np.random.default_rng(4).normal(0.3, 0.08, 10_000), n_queries=100)
    text = calibrations_to_json([calibration])
    (back,) = calibrations_from_json(text)
    assert back.score_kind == SCORE_FUSED and back.n_queries == 100
    for far in (1e-2, 1e-5):
        assert back.score_at_far(far) == pytest.approx(calibration.score_at_far(far), abs=1e-5)
    assert calibrations_from_json(None) == ()
    data = calibration.to_dict()
    for broken in (
        "not json",
        "{}",
        '[{"format": 99}]',
        calibrations_to_json([calibration]).replace('"tail_scale": ', '"tail_scale": -'),
    ):
        with pytest.raises(ContractError):
            calibrations_from_json(broken)
    with pytest.raises(ContractError):  # knots must be monotone
        ScoreCalibration.from_dict(data | {"score": list(reversed(data["score"]))})
    with pytest.raises(ContractError):
        _fit(np.zeros(100))  # too few impostors to fit a tail


def test_pick_calibration_prefers_the_same_queries() -> None:
    scores = np.random.default_rng(5).normal(0.3, 0.08, 5_000)
    flip, plain = _fit(scores), _fit(scores + 0.01, queries="plain")
    both = [flip, plain]
    assert pick_calibration(both, score_kind=SCORE_FUSED, queries="plain") is plain
    assert pick_calibration([flip], score_kind=SCORE_FUSED, queries="plain") is flip
    assert pick_calibration(both, score_kind="forward", queries="plain") is None


def test_rules_name_what_decided() -> None:
    calibration = _fit(np.random.default_rng(6).normal(0.3, 0.08, 50_000))
    gallery = GalleryCount(identities=90, faces=100)
    common = {"recommended": 0.6, "default": 0.5, "target_fpir": 0.01, "gallery": gallery}
    calibrated = decide_identify(requested=None, calibration=calibration, **common)
    assert calibrated.rule == "target-fpir" and calibrated.target_fpir == 0.01
    assert calibrated.threshold == open_set_threshold(
        calibration=calibration, target_fpir=0.01, gallery_faces=100
    )
    assert calibrated.estimated_fpir == pytest.approx(0.01)
    explicit = decide_identify(requested=0.42, calibration=calibration, **common)
    assert (explicit.rule, explicit.threshold, explicit.target_fpir) == ("explicit", 0.42, None)
    assert explicit.estimated_fpir is not None and explicit.estimated_fpir > 0.5
    old_file = decide_identify(requested=None, calibration=None, **common)
    assert (old_file.rule, old_file.threshold, old_file.estimated_fpir) == (
        "transformer-threshold",
        0.6,
        None,
    )
    bare = decide_identify(requested=None, calibration=None, **common | {"recommended": None})
    assert (bare.rule, bare.threshold) == ("default", 0.5)
    verify = decide_verify(
        requested=None, calibration=calibration, recommended=0.6, default=0.5, target_far=1e-3
    )
    assert verify.rule == "target-far" and verify.threshold == calibration.score_at_far(1e-3)


def test_gallery_counter_follows_faces_at_once_and_identities_when_they_move() -> None:
    faces, identities, calls = [5], [3], []

    def count_identities() -> int:
        calls.append(1)
        return identities[0]

    counter = GalleryCounter(faces=lambda: faces[0], identities=count_identities, max_age_s=60)
    assert counter.current() == GalleryCount(identities=3, faces=5)
    assert counter.current() == GalleryCount(identities=3, faces=5) and len(calls) == 1
    faces[0], identities[0] = 7, 4
    assert counter.current() == GalleryCount(identities=4, faces=7) and len(calls) == 2
    stale = GalleryCounter(faces=lambda: faces[0], identities=count_identities, max_age_s=0)
    identities[0] = 6
    stale.current()
    assert stale.current().identities == 6
