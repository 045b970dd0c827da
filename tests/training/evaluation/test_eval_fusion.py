"""The mapped row scores what the service scores: two-way fused scores and flip-averaged queries,
each against a naive per-pair reference written out here (no shared code with the protocol)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from service.contracts import PairsSet
from service.errors import InvalidInput
from service.evaluation.metrics import tar_at_far
from service.evaluation.protocol import (
    FAR_TARGET,
    ROW_MAPPED,
    ROW_NEW_NEW,
    MappedRows,
    build_gallery_and_probes,
    closed_set_report,
    evaluate_mapping,
    map_rows,
    query_vectors,
)
from service.vectors import QUERIES_FLIP, QUERIES_PLAIN
from training.evaluation.synthetic import synthetic_pairs


def cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def naive_fused(
    pairs: PairsSet,
    *,
    queries: np.ndarray,
    forward: np.ndarray,
    backward: np.ndarray | None,
    weight: float,
) -> tuple[float, float, float]:
    """(top-1 %, TAR % at FAR=1e-3, threshold): w*cos(f(q), g) + (1-w)*cos(q, h(g)), pair by
    pair in Python loops."""
    split = build_gallery_and_probes(pairs)
    labels = pairs.label
    templates = set(split.template_rows.tolist())

    def score(p: int, g: int) -> float:
        s = weight * cos(forward[p], pairs.old[g])
        if weight < 1.0:
            assert backward is not None
            s += (1.0 - weight) * cos(queries[p], backward[g])
        return s

    hits, genuine, impostor = 0, [], []
    for p in split.probe_rows.tolist():
        best, best_score = -1, -np.inf
        for g in split.gallery_rows.tolist():
            s = score(p, g)
            if s > best_score:
                best, best_score = g, s
            if g in templates:
                (genuine if labels[g] == labels[p] else impostor).append(s)
        hits += int(labels[best] == labels[p])
    verification = tar_at_far(
        genuine=np.array(genuine), impostor=np.array(impostor), far=FAR_TARGET
    )
    return 100.0 * hits / split.probe_rows.size, verification.tar, verification.threshold


def informative_pairs(seed: int = 5) -> tuple[PairsSet, np.ndarray, np.ndarray]:
    """A set plus a noisy forward output and a clean-ish backward output (so that fused and
    forward-only rankings differ)."""
    pairs = synthetic_pairs(n_identities=60, d_new=12, d_old=16, noise=0.5, seed=seed)
    rng = np.random.default_rng(seed)
    unit_new = pairs.new / np.linalg.norm(pairs.new, axis=1, keepdims=True)
    # forward: the old vector (minus its common offset) buried in noise
    forward = (pairs.old - 0.5) + 2.0 * rng.standard_normal(pairs.old.shape)
    # backward: the row's own new vector, slightly perturbed (h(g) ~ what the new model would say)
    backward = unit_new + 0.2 * rng.standard_normal(unit_new.shape)
    return pairs, forward.astype(np.float32), backward.astype(np.float32)


@pytest.mark.parametrize("weight", [0.9, 0.6])
def test_fused_scores_match_naive_loop(weight: float) -> None:
    pairs, forward, backward = informative_pairs()
    queries, kind = query_vectors(pairs)
    assert kind == QUERIES_PLAIN
    mapped = MappedRows(forward=forward, queries=queries, backward=backward, fusion_weight=weight)
    report = evaluate_mapping(eval_pairs=pairs, mapped=mapped)
    top1, tar, threshold = naive_fused(
        pairs, queries=queries, forward=forward, backward=backward, weight=weight
    )
    row = report.row(ROW_MAPPED)
    assert row.top1 == pytest.approx(top1)
    assert row.tar_at_far_1e3 == pytest.approx(tar)
    assert row.threshold_at_far_1e3 == pytest.approx(threshold, abs=1e-5)
    assert report.scoring == f"two-way fused, w={weight:g}" and report.queries == QUERIES_PLAIN
    # The fused figures are not the forward-only ones (the test would notice fusion ignored).
    forward_top1, forward_tar, _ = naive_fused(
        pairs, queries=queries, forward=forward, backward=None, weight=1.0
    )
    assert (row.top1, row.tar_at_far_1e3) != pytest.approx((forward_top1, forward_tar))
    forward_only = evaluate_mapping(eval_pairs=pairs, mapped=forward).row(ROW_MAPPED)
    assert (forward_only.top1, forward_only.tar_at_far_1e3) == pytest.approx(
        (forward_top1, forward_tar)
    )


def test_map_rows_feeds_queries_and_unit_old_vectors_and_closed_set_agrees() -> None:
    pairs, _, _ = informative_pairs(seed=6)
    seen: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    m_f = rng.standard_normal((pairs.new_dim, pairs.old_dim))
    m_b = rng.standard_normal((pairs.old_dim, pairs.new_dim))

    def forward(q: np.ndarray) -> np.ndarray:
        seen["forward_in"] = q
        return q @ m_f

    def backward(g: np.ndarray) -> np.ndarray:
        seen["backward_in"] = g
        return g @ m_b

    mapped = map_rows(pairs, forward=forward, backward=backward, fusion_weight=0.8)
    unit_old = pairs.old / np.linalg.norm(pairs.old, axis=1, keepdims=True)
    unit_new = pairs.new / np.linalg.norm(pairs.new, axis=1, keepdims=True)
    np.testing.assert_allclose(seen["backward_in"], unit_old, atol=1e-6)
    np.testing.assert_allclose(seen["forward_in"], unit_new, atol=1e-6)
    closed = closed_set_report(fit_pairs=pairs, mapped=mapped)
    top1, tar, _ = naive_fused(
        pairs, queries=unit_new, forward=unit_new @ m_f, backward=unit_old @ m_b, weight=0.8
    )
    assert closed.row(ROW_MAPPED).top1 == pytest.approx(top1)
    assert closed.row(ROW_MAPPED).tar_at_far_1e3 == pytest.approx(tar)
    assert closed.scoring == "two-way fused, w=0.8"
    with pytest.raises(InvalidInput, match="backward map"):
        map_rows(pairs, forward=forward, backward=None, fusion_weight=0.8)
    with pytest.raises(InvalidInput, match="backward map"):
        map_rows(pairs, forward=forward, backward=backward, fusion_weight=1.0)
    with pytest.raises(InvalidInput, match="backward vectors"):
        evaluate_mapping(
            eval_pairs=pairs,
            mapped=dataclasses.replace(mapped, backward=mapped.backward[:-1]),
        )


def flip_pairs(seed: int = 7) -> PairsSet:
    """new and new_flip = the same latent seen with independent noise: their average is cleaner
    than either, so flip-averaged queries rank differently from plain ones."""
    pairs = synthetic_pairs(n_identities=60, d_new=16, d_old=16, noise=0.3, seed=seed)
    rng = np.random.default_rng(seed)
    clean = pairs.new
    noisy = clean + 0.9 * rng.standard_normal(clean.shape)
    mirror = clean + 0.9 * rng.standard_normal(clean.shape)
    return dataclasses.replace(
        pairs, new=noisy.astype(np.float32), new_flip=mirror.astype(np.float32)
    )


def test_flip_averaged_queries_are_used_when_new_flip_is_present() -> None:
    pairs = flip_pairs()

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    # least-squares maps between the unit spaces (so that the mapped row means something)
    m_f = np.linalg.lstsq(unit(pairs.new), unit(pairs.old), rcond=None)[0]
    m_b = np.linalg.lstsq(unit(pairs.old), unit(pairs.new), rcond=None)[0]

    by_hand = unit(unit(pairs.new.astype(np.float64)) + unit(pairs.new_flip.astype(np.float64)))
    reports = {}
    for flip in (True, False):
        mapped = map_rows(
            pairs, forward=lambda q: q @ m_f, backward=lambda g: g @ m_b, fusion_weight=0.7,
            flip=flip,
        )  # fmt: skip
        reports[flip] = evaluate_mapping(eval_pairs=pairs, mapped=mapped)
        queries = by_hand if flip else unit(pairs.new.astype(np.float64))
        np.testing.assert_allclose(mapped.queries, queries, atol=1e-5)
        top1, tar, _ = naive_fused(
            pairs,
            queries=queries,
            forward=queries @ m_f,
            backward=unit(pairs.old.astype(np.float64)) @ m_b,
            weight=0.7,
        )
        row = reports[flip].row(ROW_MAPPED)
        assert (row.top1, row.tar_at_far_1e3) == pytest.approx((top1, tar))
    assert reports[True].queries == QUERIES_FLIP and reports[False].queries == QUERIES_PLAIN
    flipped, plain = reports[True].row(ROW_MAPPED), reports[False].row(ROW_MAPPED)
    assert (flipped.top1, flipped.tar_at_far_1e3) != (plain.top1, plain.tar_at_far_1e3)
    # The reference rows stay plain whatever the queries.
    assert reports[True].row(ROW_NEW_NEW) == reports[False].row(ROW_NEW_NEW)
    no_flip_column = dataclasses.replace(pairs, new_flip=None)
    assert query_vectors(no_flip_column)[1] == QUERIES_PLAIN


def test_report_says_which_queries_and_scoring() -> None:
    pairs, forward, backward = informative_pairs()
    mapped = MappedRows(
        forward=forward, queries=query_vectors(pairs)[0], backward=backward, fusion_weight=0.9
    )
    report = evaluate_mapping(eval_pairs=pairs, mapped=mapped)
    data = json.loads(report.to_json())
    assert (data["mapped_queries"], data["mapped_scoring"]) == ("plain", "two-way fused, w=0.9")
    assert "Mapped row: plain queries; scoring: two-way fused, w=0.9." in report.to_markdown()
    plain = evaluate_mapping(eval_pairs=pairs, mapped=forward)
    assert (plain.queries, plain.scoring) == ("plain", "forward")
    nothing = evaluate_mapping(eval_pairs=pairs, mapped=None)
    assert nothing.queries is None and "Mapped row" not in nothing.to_markdown()


def test_report_pairs_mapped_with_old_old_on_the_same_probes() -> None:
    pairs, forward, backward = informative_pairs()
    queries, _ = query_vectors(pairs)
    mapped = MappedRows(forward=forward, queries=queries, backward=backward, fusion_weight=0.9)
    report = evaluate_mapping(eval_pairs=pairs, mapped=mapped)
    paired = report.paired
    assert paired is not None and paired.only_a + paired.only_b > 0
    # the discordant counts ARE the top-1 difference: (only mapped - only old/old) / probes
    difference = report.row(ROW_MAPPED).top1 - report.row("old/old").top1
    assert 100.0 * (paired.only_a - paired.only_b) / report.probes == pytest.approx(difference)
    assert report.to_dict()["mapped_vs_old_old"]["mcnemar_p"] == paired.p_value
    assert "McNemar" in report.to_markdown()
    assert evaluate_mapping(eval_pairs=pairs, mapped=None).paired is None
