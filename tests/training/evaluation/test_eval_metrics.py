"""Pure metrics against naive (loop-based) reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.errors import InvalidInput
from service.evaluation.metrics import (
    accepted_count_at_far,
    compatibility,
    gap_closed,
    genuine_impostor_scores,
    mcnemar_exact,
    tar_at_far,
    top_k_accuracy,
    top_k_hits,
)


def naive_top_k(ranked_ids, gallery_labels, probe_labels, k):
    hits = 0
    for i, probe_label in enumerate(probe_labels):
        for position in range(min(k, len(ranked_ids[i]))):
            gallery_id = ranked_ids[i][position]
            if gallery_id != -1 and gallery_labels[gallery_id] == probe_label:
                hits += 1
                break
    return 100.0 * hits / len(probe_labels)


def naive_tar_at_far(genuine, impostor, far):
    """The lowest candidate threshold whose FAR (accept iff score > t) is <= far."""
    candidates = [*sorted({float(s) for s in impostor}), -math.inf]
    best = math.inf
    for t in candidates:
        accepted = sum(1 for s in impostor if s > t)
        if accepted / len(impostor) <= far and t < best:
            best = t
    tar = 100.0 * sum(1 for s in genuine if s > best) / len(genuine)
    return tar, best


def naive_split_scores(scores, probe_labels, template_labels):
    genuine, impostor = [], []
    for i, p in enumerate(probe_labels):
        for j, t in enumerate(template_labels):
            (genuine if p == t else impostor).append(scores[i][j])
    return genuine, impostor


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 3, 5])
def test_top_k_matches_naive_with_empty_slots(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    n_gallery, n_probes, width = 6, 40, 5
    gallery_labels = rng.integers(0, 4, size=n_gallery)
    probe_labels = rng.integers(0, 5, size=n_probes)  # label 4 never in the gallery
    ranked = np.stack([rng.permutation(n_gallery)[:width] for _ in range(n_probes)])
    ranked[rng.random(ranked.shape) < 0.2] = -1  # as FAISS gives when k > ntotal
    got = top_k_accuracy(
        ranked_ids=ranked, gallery_labels=gallery_labels, probe_labels=probe_labels, k=k
    )
    assert got == pytest.approx(naive_top_k(ranked, gallery_labels, probe_labels, k))


def test_top_k_negative_id_never_hits_even_when_label_of_row_zero_matches() -> None:
    # -1 would index the last row and 0 the first; neither may count.
    ranked = np.array([[-1, -1], [0, -1]])
    got = top_k_accuracy(
        ranked_ids=ranked, gallery_labels=np.array([7, 7]), probe_labels=np.array([7, 7]), k=2
    )
    assert got == 50.0


def test_top_k_rejects_bad_shapes() -> None:
    with pytest.raises(InvalidInput):
        top_k_accuracy(
            ranked_ids=np.zeros((3, 2), int),
            gallery_labels=np.zeros(3),
            probe_labels=np.zeros(2),
            k=1,
        )
    with pytest.raises(InvalidInput):
        top_k_accuracy(
            ranked_ids=np.zeros((2, 2), int),
            gallery_labels=np.zeros(3),
            probe_labels=np.zeros(2),
            k=0,
        )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("far", [0.0, 1e-3, 0.01, 0.1, 0.5, 1.0])
def test_tar_at_far_matches_naive_with_ties(seed: int, far: float) -> None:
    rng = np.random.default_rng(seed)
    # Rounded scores: many ties among impostors and between genuine and impostor scores.
    impostor = np.round(rng.normal(0.0, 1.0, size=300), 1)
    genuine = np.round(rng.normal(1.5, 1.0, size=60), 1)
    got = tar_at_far(genuine=genuine, impostor=impostor, far=far)
    tar, threshold = naive_tar_at_far(genuine, impostor, far)
    assert got.tar == pytest.approx(tar)
    assert got.threshold == threshold
    assert got.far_realised <= far + 1e-12


def test_tar_at_far_all_tied_impostors_accept_none_of_them() -> None:
    result = tar_at_far(genuine=np.array([0.5, 0.7]), impostor=np.full(1000, 0.5), far=1e-3)
    assert result.threshold == 0.5
    assert result.far_realised == 0.0
    assert result.tar == 50.0  # the genuine score tied with the threshold is rejected


def test_accepted_count_is_exact_in_floating_point() -> None:
    for n in range(1, 5000, 7):
        for far in (1e-3, 1e-2, 0.3):
            a = accepted_count_at_far(n, far)
            assert a / n <= far
            assert a == n or (a + 1) / n > far


def test_genuine_impostor_split_matches_naive() -> None:
    rng = np.random.default_rng(3)
    scores = rng.random((7, 5))
    probes, templates = rng.integers(0, 4, 7), rng.integers(0, 4, 5)
    genuine, impostor = genuine_impostor_scores(
        scores=scores, probe_labels=probes, template_labels=templates
    )
    ref_genuine, ref_impostor = naive_split_scores(scores, probes, templates)
    assert sorted(genuine.tolist()) == sorted(ref_genuine)
    assert sorted(impostor.tolist()) == sorted(ref_impostor)


def test_compatibility_and_gap_closed() -> None:
    assert compatibility(mapped_top1=94.0, old_top1=93.9)
    assert not compatibility(mapped_top1=93.9, old_top1=93.9)  # strictly greater
    assert gap_closed(mapped=95.0, old=90.0, new=100.0) == pytest.approx(0.5)
    assert gap_closed(mapped=85.0, old=90.0, new=100.0) == pytest.approx(-0.5)
    assert gap_closed(mapped=85.0, old=90.0, new=90.0) is None


def naive_mcnemar(hits_a, hits_b):
    """Loop counts; the two-sided exact p as the doubled smaller binomial tail, in exact
    fractions (no floating point until the end)."""
    from fractions import Fraction

    only_a = sum(1 for a, b in zip(hits_a, hits_b, strict=True) if a and not b)
    only_b = sum(1 for a, b in zip(hits_a, hits_b, strict=True) if b and not a)
    n, m = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return only_a, only_b, 1.0
    tail = sum(Fraction(math.comb(n, k), 2**n) for k in range(m + 1))
    return only_a, only_b, float(min(Fraction(1), 2 * tail))


@pytest.mark.parametrize("seed", range(5))
def test_mcnemar_matches_naive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    a = rng.random(n) < rng.uniform(0.5, 0.99)
    b = np.where(rng.random(n) < 0.8, a, rng.random(n) < 0.9)
    got = mcnemar_exact(hits_a=a, hits_b=b)
    only_a, only_b, p = naive_mcnemar(a.tolist(), b.tolist())
    assert (got.only_a, got.only_b) == (only_a, only_b)
    assert got.p_value == pytest.approx(p, rel=1e-9, abs=1e-12)


def test_mcnemar_edges() -> None:
    same = np.array([True, False, True])
    assert mcnemar_exact(hits_a=same, hits_b=same).p_value == 1.0
    # 10 discordant, all one way: p = 2 / 2**10
    a, b = np.ones(10, bool), np.zeros(10, bool)
    assert mcnemar_exact(hits_a=a, hits_b=b).p_value == pytest.approx(2 / 1024)
    # thousands of discordant probes stay finite (log-space terms)
    big = mcnemar_exact(hits_a=np.arange(3000) % 2 == 0, hits_b=np.arange(3000) % 2 == 1)
    assert big.p_value == pytest.approx(1.0)
    with pytest.raises(InvalidInput):
        mcnemar_exact(hits_a=np.ones(3, bool), hits_b=np.ones(4, bool))


def test_top_k_hits_agree_with_accuracy_per_probe() -> None:
    rng = np.random.default_rng(9)
    gallery_labels = rng.integers(0, 4, size=6)
    probe_labels = rng.integers(0, 5, size=30)
    ranked = np.stack([rng.permutation(6)[:3] for _ in range(30)])
    hits = top_k_hits(
        ranked_ids=ranked, gallery_labels=gallery_labels, probe_labels=probe_labels, k=2
    )
    for i in range(30):
        expected = naive_top_k(ranked[i : i + 1], gallery_labels, probe_labels[i : i + 1], 2)
        assert hits[i] == (expected == 100.0)
