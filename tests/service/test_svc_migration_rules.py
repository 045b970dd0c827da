"""The progressive migration's rules against naive references: cross-space fusion, the capture
rule, the cap's replacement, FNIR at FPIR; the simulation on synthetic data (seconds) and on
the kit (marked ``kit``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from svc_helpers import make_transformer_onnx

from service.cli import main as cli_main
from service.decision import SCORE_FORWARD, SCORE_NATIVE, far_for_fpir, fit_calibration
from service.migration.capture import CaptureRule, batch_verdicts, judge, slot_for
from service.migration.fusion import KIND_MAPPED, KIND_NATIVE, SpaceHits, fuse
from service.migration.simulate import fnir_at, migration_split, simulate

OLD_NOISE, NEW_NOISE = 0.9, 0.3


def _calibration(kind: str, space: str, *, loc: float, seed: int):  # type: ignore[no-untyped-def]
    scores = np.random.default_rng(seed).normal(loc, 0.1, 5000)
    return fit_calibration(scores, score_kind=kind, space=space, queries="plain")


MAPPED = _calibration(SCORE_FORWARD, "old", loc=0.5, seed=1)
NATIVE = _calibration(SCORE_NATIVE, "new", loc=0.1, seed=2)


def _hits(rng, space, kind, n_identities=12, faces=20):  # type: ignore[no-untyped-def]
    ids = rng.permutation(1000)[:faces]
    scores = np.sort(rng.uniform(0.0, 1.0, faces))[::-1]
    return SpaceHits(space, kind, ids, scores, rng.integers(0, n_identities, faces))


def _naive_fuse(per_space, calibrations):  # type: ignore[no-untyped-def]
    """identity -> lowest log10 FAR over the spaces of its best score there (plain loops)."""
    out: dict[int, float] = {}
    for hits in per_space:
        for identity in set(hits.identities.tolist()):
            best = max(
                s for s, i in zip(hits.scores, hits.identities, strict=True) if i == identity
            )
            far = float(calibrations[hits.space].log10_far_of(best))
            out[int(identity)] = min(out.get(int(identity), 0.0), far)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_fusion_matches_a_naive_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    per_space = [_hits(rng, "old", KIND_MAPPED), _hits(rng, "new", KIND_NATIVE)]
    fused = fuse(per_space, calibrations={"old": MAPPED, "new": NATIVE}, reference=MAPPED, top_k=50)
    naive = _naive_fuse(per_space, {"old": MAPPED, "new": NATIVE})
    assert {c.identity_id for c in fused} == set(naive)
    for c in fused:
        assert c.log10_far == pytest.approx(naive[c.identity_id], abs=1e-9)
        assert set(c.spaces) <= {"old", "new"} and c.space in c.spaces
    assert [c.log10_far for c in fused] == sorted(c.log10_far for c in fused)
    # a native-only identity's score is the mapped score with the same FAR
    for c in fused:
        if c.space == "new" and c.log10_far < 0:
            assert float(MAPPED.log10_far_of(c.score)) == pytest.approx(c.log10_far, abs=1e-6)


def test_one_space_fusion_keeps_the_raw_scores_and_their_order() -> None:
    rng = np.random.default_rng(7)
    hits = _hits(rng, "old", KIND_MAPPED, n_identities=30)
    fused = fuse([hits], calibrations={"old": MAPPED}, reference=MAPPED, top_k=50)
    best: dict[int, float] = {}
    for s, i in zip(hits.scores, hits.identities, strict=True):
        best[int(i)] = max(best.get(int(i), -1.0), float(s))
    assert [c.identity_id for c in fused] == sorted(best, key=lambda i: -best[i])
    assert [c.score for c in fused] == [best[c.identity_id] for c in fused]


def _naive_judge(candidates, per_space, rule, n):  # type: ignore[no-untyped-def]
    if not candidates:
        return False
    top = candidates[0]
    second = candidates[1].log10_far if len(candidates) > 1 else 0.0
    strength = min(rule.fpir * 10**rule.margin_decades, 0.5)
    if top.log10_far > math.log10(1 - (1 - strength) ** (1 / n)):
        return False
    if second - top.log10_far < rule.margin_decades:
        return False
    for hits in per_space:
        mine = [
            s for s, i in zip(hits.scores, hits.identities, strict=True) if i == top.identity_id
        ]
        others = [
            s for s, i in zip(hits.scores, hits.identities, strict=True) if i != top.identity_id
        ]
        if mine and others and max(others) > max(mine):
            return False
    return True


def test_capture_rule_matches_a_naive_reference() -> None:
    rng = np.random.default_rng(3)
    rule = CaptureRule(fpir=0.003, margin_decades=1.0)
    decided = []
    for trial in range(300):
        per_space = [
            _hits(rng, "old", KIND_MAPPED, faces=8),
            _hits(rng, "new", KIND_NATIVE, faces=8),
        ]
        if trial % 3 == 0:  # a strong top-1 now and then, so both outcomes occur
            per_space[1].scores[0] = 0.99
        cands = fuse(
            per_space, calibrations={"old": MAPPED, "new": NATIVE}, reference=MAPPED, top_k=5
        )
        n = int(rng.integers(10, 10_000))
        verdict = judge(cands, per_space, rule=rule, gallery_faces=n)
        assert verdict.capture == _naive_judge(cands, per_space, rule, n), trial
        decided.append(verdict.capture)
    assert 0 < sum(decided) < len(decided)
    assert math.isclose(rule.strength_limit(100), math.log10(far_for_fpir(0.03, 100)))


def test_a_batch_of_one_person_repeated_captures_nothing() -> None:
    rng = np.random.default_rng(0)
    strong = _hits(rng, "old", KIND_MAPPED)
    strong.scores[0] = 0.999
    cands = fuse([strong], calibrations={"old": MAPPED}, reference=MAPPED, top_k=5)
    verdict = judge(cands, [strong], rule=CaptureRule(margin_decades=0.0), gallery_faces=10)
    assert verdict.capture
    both = batch_verdicts([verdict, verdict])
    assert [v.capture for v in both] == [False, False] and both[0].reason == "repeated in batch"
    assert batch_verdicts([verdict])[0].capture


def test_the_cap_replaces_the_most_redundant_captured_vector() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        existing = rng.standard_normal((5, 6)).astype(np.float32)
        existing /= np.linalg.norm(existing, axis=1, keepdims=True)
        new = existing[2] + rng.uniform(0.01, 2.0) * rng.standard_normal(6).astype(np.float32)
        new /= np.linalg.norm(new)
        evictable = np.array([True, True, True, False, True])
        assert slot_for(new, existing, evictable, max_native=5) == (True, None)
        keep, evict = slot_for(new, existing, evictable, max_native=4)
        pool = np.vstack([existing, new])
        sims = pool @ pool.T - 3 * np.eye(6)
        red = {j: sims[j].max() for j in [0, 1, 2, 4]}  # naive: argmax over the evictable
        worst = max(red, key=lambda j: red[j])
        refuse = sims[5].max() >= red[worst]  # the newcomer at least as redundant: kept out
        assert (keep, evict) == ((False, None) if refuse else (True, worst))


def test_fnir_at_fpir_matches_the_training_protocol() -> None:
    from training.evaluation.openset import SearchResults, fnir_at_fpir

    rng = np.random.default_rng(4)
    for _ in range(20):
        mated, nonmated = rng.normal(1, 0.5, 300), rng.normal(0, 0.5, int(rng.integers(50, 900)))
        correct = rng.random(300) < 0.9
        reference, _ = fnir_at_fpir(SearchResults(mated, correct, nonmated), 0.01)
        assert fnir_at(mated, correct, nonmated, 0.01) == pytest.approx(reference)


def _synthetic_pairs(path: Path, *, seed: int = 0) -> Path:
    """People in a 16-d new space; the old model sees them through a rotation, noisier."""
    rng = np.random.default_rng(seed)
    d, people = 16, 120
    centres = rng.standard_normal((people, d))
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0]
    counts = rng.integers(1, 7, people)
    label = np.repeat(np.arange(people), counts)
    base = centres[label]
    new = base + NEW_NOISE * rng.standard_normal(base.shape)
    old = (base + OLD_NOISE * rng.standard_normal(base.shape)) @ rotation.T
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    paths = np.asarray([f"p{lab}/{i:03d}.jpg" for i, lab in enumerate(label)])
    np.savez(path, old=old.astype(np.float32), new=new.astype(np.float32), label=label, path=paths)
    return path


def _synthetic_transformer(pairs_path: Path, out: Path) -> Path:
    from service.contracts import load_pairs
    from service.vectors import l2_normalize

    pairs = load_pairs(pairs_path, mmap=False)
    weight, *_ = np.linalg.lstsq(pairs.new, l2_normalize(pairs.old), rcond=None)
    mapped = l2_normalize(pairs.new @ weight)
    old, new, labels = l2_normalize(pairs.old), pairs.new, np.asarray(pairs.label)
    other = labels[:, None] != labels[None, :]
    calibrations = (
        fit_calibration(
            (mapped @ old.T)[other], score_kind=SCORE_FORWARD, space="o", queries="plain"
        ),
        fit_calibration((new @ new.T)[other], score_kind=SCORE_NATIVE, space="n", queries="plain"),
    )
    out.write_bytes(
        make_transformer_onnx(input_dim=16, output_dim=16, weight=weight, calibrations=calibrations)
    )
    return out


def test_simulation_on_synthetic_data(tmp_path, capsys) -> None:
    pairs = _synthetic_pairs(tmp_path / "p.npz")
    onnx_file = _synthetic_transformer(pairs, tmp_path / "t.onnx")
    result = simulate(pairs_path=pairs, transformer_path=onnx_file, seed=1)
    assert result["rows"] == "all" and result["captures"] > 0
    assert result["top1_after"] > result["top1_before"]
    assert result["false_captures"] <= 0.05 * result["captures"]
    assert 0 < result["coverage"] <= 1
    assert result["fnir_at_fpir_0.01_after"] < result["fnir_at_fpir_0.01_before"]
    code = cli_main(
        [
            "migration",
            "simulate",
            "--pairs",
            str(pairs),
            "--transformer",
            str(onnx_file),
            "--json",
            "--seed",
            "1",
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed == json.loads(json.dumps(result))
    keys = {"top1_before", "top1_after", "top1_new_new", "captures", "false_captures", "coverage"}
    assert keys | {"fnir_at_fpir_0.01_before", "fnir_at_fpir_0.01_after"} <= set(printed)


def test_the_split_is_the_documented_one(tmp_path) -> None:
    from service.contracts import load_pairs

    pairs = load_pairs(_synthetic_pairs(tmp_path / "p.npz"), mmap=False)
    split = migration_split(pairs, np.arange(len(pairs)))
    labels, paths = np.asarray(pairs.label), np.asarray(pairs.path)
    for person in np.unique(labels):
        rows = np.flatnonzero(labels == person)
        rows = rows[np.argsort(paths[rows])]
        if rows.size == 1:
            assert rows[0] in split.distractors
            continue
        assert rows[0] in split.templates
        assert set(rows[1::2]) <= set(split.stream) and set(rows[2::2]) <= set(split.test)


@pytest.mark.kit
def test_simulation_on_the_kit_meets_the_targets(tmp_path, kit_pairs_file) -> None:
    pairs = kit_pairs_file
    onnx_file = tmp_path / "ridge.onnx"
    code = cli_main(
        [
            "transformer",
            "fit",
            "--pairs",
            str(pairs),
            "--output",
            str(onnx_file),
            "--recipe",
            "ridge",
            "--no-progress",
            "--calibration-folds",
            "0",
        ]
    )
    assert code == 0
    result = simulate(pairs_path=pairs, transformer_path=onnx_file, seed=0)
    assert result["top1_after"] >= result["top1_new_new"]
    assert result["false_captures"] <= 0.005 * result["captures"]
    after = result["fnir_at_fpir_0.01_after"]
    assert (
        after < result["fnir_at_fpir_0.01_before"] and after < result["fnir_at_fpir_0.01_old_old"]
    )
