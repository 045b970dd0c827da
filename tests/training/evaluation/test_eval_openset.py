"""Open-set evaluation and calibration data against naive (loop) references."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from service.decision import open_set_threshold
from service.evaluation.protocol import ROW_MAPPED, ROW_NEW_NEW, ROW_OLD_OLD, MappedRows
from service.vectors import l2_normalize
from training.evaluation.calibration import calibrate, impostor_scores
from training.evaluation.openset import (
    FPIR_TARGETS,
    SearchResults,
    det_curve,
    evaluate_open_set,
    fnir_at_fpir,
    fpir_threshold,
    is_enrolled,
    open_set_split,
    plot_det,
    rates_at_threshold,
)
from training.evaluation.synthetic import synthetic_pairs


def _results(seed: int, *, mated: int = 300, nonmated: int = 500) -> SearchResults:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(0.7, 0.1, mated), 2)  # rounded: ties on purpose
    return SearchResults(
        mated_score=scores,
        mated_correct=rng.random(mated) < 0.9,
        nonmated_score=np.round(rng.normal(0.4, 0.1, nonmated), 2),
    )


def _naive_fnir_at_fpir(r: SearchResults, fpir: float) -> tuple[float, float]:
    """Try every candidate threshold from the strictest down; keep the lowest with FPIR <= fpir
    (accept when score > t); FNIR by counting."""
    candidates = sorted(set(r.nonmated_score.tolist()) | {float("-inf")}, reverse=True)
    best = None
    for t in candidates:
        accepted = sum(1 for s in r.nonmated_score if s > t)
        if accepted / len(r.nonmated_score) <= fpir:
            best = t
    assert best is not None
    hits = sum(1 for s, c in zip(r.mated_score, r.mated_correct, strict=True) if c and s > best)
    return 1.0 - hits / len(r.mated_score), best


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fpir", [*FPIR_TARGETS, 0.0, 1.0])
def test_fnir_at_fpir_matches_the_naive_reference(seed: int, fpir: float) -> None:
    r = _results(seed)
    fnir, t = fnir_at_fpir(r, fpir)
    naive_fnir, naive_t = _naive_fnir_at_fpir(r, fpir)
    assert t == naive_t and fnir == pytest.approx(naive_fnir)
    assert np.mean(r.nonmated_score > t) <= fpir  # never above the target
    assert fpir_threshold(r.nonmated_score, fpir) == t


def test_rates_at_threshold_use_the_service_rule() -> None:
    r = _results(9)
    for t in (0.3, 0.45, 0.6, 0.75):
        fpir, fnir = rates_at_threshold(r, t)
        assert fpir == sum(s >= t for s in r.nonmated_score) / len(r.nonmated_score)
        hits = sum(c and s >= t for s, c in zip(r.mated_score, r.mated_correct, strict=True))
        assert fnir == pytest.approx(1 - hits / len(r.mated_score))


def test_det_curve_matches_a_point_by_point_count() -> None:
    r = _results(3, mated=60, nonmated=80)
    fpir, fnir = det_curve(r)
    thresholds = [*sorted(r.nonmated_score), float("inf")]
    for t, a, b in zip(thresholds, fpir, fnir, strict=True):
        assert a == pytest.approx(np.mean(r.nonmated_score > t))
        assert b == pytest.approx(1 - np.mean(r.mated_correct & (r.mated_score > t)))
    assert np.all(np.diff(fpir) <= 0) and np.all(np.diff(fnir) >= 0)


def test_the_split_is_the_documented_hash_and_keeps_every_row_in_one_role() -> None:
    assert is_enrolled("George_W_Bush") == (
        int(hashlib.sha1(b"opensetGeorge_W_Bush").hexdigest(), 16) % 2 == 0
    )
    pairs = synthetic_pairs(n_identities=200, seed=2)
    split = open_set_split(pairs)
    roles = [split.template_rows, split.distractor_rows, split.mated_rows, split.nonmated_rows]
    everything = np.sort(np.concatenate(roles))
    assert np.array_equal(everything, np.arange(len(pairs)))  # a partition of the rows
    names = np.asarray(pairs.name)
    counts = {n: int((names == n).sum()) for n in set(names.tolist())}
    for row in split.template_rows:
        same = np.flatnonzero(names == names[row])
        assert is_enrolled(names[row]) and counts[names[row]] >= 2
        assert pairs.path[row] == min(pairs.path[same])  # the first image by path
    for row in split.nonmated_rows:
        assert not is_enrolled(names[row]) and counts[names[row]] >= 2
    for row in split.distractor_rows:
        assert counts[names[row]] == 1
    gallery_names = set(names[split.gallery_rows].tolist())
    assert not gallery_names & set(names[split.nonmated_rows].tolist())  # strangers stay out


def _naive_top1(probes: np.ndarray, gallery: np.ndarray) -> tuple[list[float], list[int]]:
    scores, best = [], []
    for p in probes:
        sims = [float(p @ g) for g in gallery]
        j = int(np.argmax(sims))
        scores.append(sims[j])
        best.append(j)
    return scores, best


def test_evaluate_open_set_rows_match_a_naive_search(tmp_path: Path) -> None:
    pairs = synthetic_pairs(n_identities=160, seed=4)
    mapped = MappedRows(forward=pairs.old + 0.05, queries=l2_normalize(pairs.new))
    report = evaluate_open_set(eval_pairs=pairs, mapped=mapped)
    split = open_set_split(pairs)
    labels = np.asarray(pairs.label)
    gallery = split.gallery_rows
    for row, (probe_side, gallery_side) in {
        ROW_OLD_OLD: (pairs.old, pairs.old),
        ROW_NEW_NEW: (pairs.new, pairs.new),
        ROW_MAPPED: (pairs.old + 0.05, pairs.old),
    }.items():
        g = l2_normalize(gallery_side[gallery])
        mated_scores, mated_best = _naive_top1(l2_normalize(probe_side[split.mated_rows]), g)
        nonmated_scores, _ = _naive_top1(l2_normalize(probe_side[split.nonmated_rows]), g)
        naive = SearchResults(
            mated_score=np.array(mated_scores),
            mated_correct=labels[gallery][mated_best] == labels[split.mated_rows],
            nonmated_score=np.array(nonmated_scores),
        )
        for fpir in FPIR_TARGETS:
            assert report.fnir[row][fpir] == pytest.approx(_naive_fnir_at_fpir(naive, fpir)[0])
    assert report.service_rule is None  # no calibration given
    text = report.to_markdown()
    assert "FNIR@FPIR=1%" in text and "old/old" in text
    plot_det(report, tmp_path / "det.png")
    assert (tmp_path / "det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _naive_impostors(pairs, mapped: MappedRows) -> list[float]:  # type: ignore[no-untyped-def]
    """Every row against the first-by-path row of every other identity, forward score."""
    labels, paths = np.asarray(pairs.label), np.asarray(pairs.path)
    templates = {}
    for i in range(len(pairs)):
        if labels[i] not in templates or paths[i] < paths[templates[labels[i]]]:
            templates[labels[i]] = i
    q = l2_normalize(mapped.forward)
    g = l2_normalize(pairs.old)
    return [
        float(q[i] @ g[j])
        for i in range(len(pairs))
        for label, j in sorted(templates.items())
        if label != labels[i]
    ]


def test_impostor_scores_match_the_naive_pairs_and_the_service_rule_uses_them() -> None:
    pairs = synthetic_pairs(n_identities=90, seed=5)
    mapped = MappedRows(forward=pairs.old * 1.1 + 0.2, queries=l2_normalize(pairs.new))
    scores, n_queries, n_gallery = impostor_scores(pairs, mapped)
    assert n_queries == len(pairs) and n_gallery == 90
    assert np.allclose(np.sort(scores), np.sort(_naive_impostors(pairs, mapped)), atol=1e-6)
    sub, n_sub, _ = impostor_scores(pairs, mapped, max_comparisons=90 * 50)
    assert n_sub == 50 and sub.size < scores.size  # subsampled query rows
    calibration = calibrate(pairs, mapped, space="old-m")
    assert calibration.score_kind == "forward" and calibration.n_impostor == scores.size
    report = evaluate_open_set(eval_pairs=pairs, mapped=mapped, calibration=calibration)
    rule = report.service_rule
    assert rule is not None
    faces = report.counts["templates"] + report.counts["distractors"]
    assert rule.gallery_faces == faces
    assert rule.threshold == open_set_threshold(
        calibration=calibration, target_fpir=0.01, gallery_faces=faces
    )
    results = report.results[ROW_MAPPED]
    assert rule.false_matches == int(np.sum(results.nonmated_score >= rule.threshold))
    assert rule.fpir == rule.false_matches / rule.nonmated_searches
