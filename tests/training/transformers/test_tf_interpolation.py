from __future__ import annotations

import numpy as np
import pytest

from service.errors import InvalidInput
from training.transformers.data import TrainingPairs
from training.transformers.interpolation import (
    linear_pairs,
    make_synthetic,
    proximity_pairs,
    sorted_pairs,
)


def _pairs(counts: list[int], d: int = 4, seed: int = 0) -> TrainingPairs:
    rng = np.random.default_rng(seed)
    label = np.repeat(np.arange(len(counts)) * 10, counts)  # non-contiguous labels on purpose
    new = rng.standard_normal((label.size, d)).astype(np.float32)
    old = rng.standard_normal((label.size, d + 1)).astype(np.float32)
    return TrainingPairs(new=new, old=old, label=label)


def test_linear_pairs_neighbours_in_label_order() -> None:
    label = np.array([30, 10, 10, 20, 40, 50])
    assert linear_pairs(label) == [(10, 20), (30, 40)]


def test_sorted_pairs_by_image_count() -> None:
    label = np.repeat([1, 2, 3, 4, 5], [1, 9, 3, 7, 5])
    assert sorted_pairs(label) == [(2, 4), (5, 3)]


def test_proximity_pairs_nearest_old_space_means_and_skips_singletons() -> None:
    # ids 0 and 2 are near-identical in old space, as are 1 and 3; id 4 has one image.
    base = np.array([[1, 0, 0], [0, 1, 0], [1, 0.05, 0], [0, 1, 0.05], [0, 0, 1]], np.float32)
    label = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4])
    old = base[label] + 0.01
    assert sorted(tuple(sorted(p)) for p in proximity_pairs(label, old)) == [(0, 2), (1, 3)]


def test_linear_interpolation_averages_image_i_of_both_identities() -> None:
    pairs = _pairs([3, 2, 4, 4])
    synth = make_synthetic(pairs, method="linear", rate=0.5, seed=0)
    assert len(synth) == 6  # min(3, 2) + min(4, 4) = 6 available; 0.5 * 13 rounds to 6
    rows_a, rows_b = np.flatnonzero(pairs.label == 0), np.flatnonzero(pairs.label == 10)
    np.testing.assert_allclose(synth.new[0], (pairs.new[rows_a[0]] + pairs.new[rows_b[0]]) / 2)
    np.testing.assert_allclose(synth.old[1], (pairs.old[rows_a[1]] + pairs.old[rows_b[1]]) / 2)
    assert synth.label.min() > pairs.label.max()  # fresh synthetic identities


@pytest.mark.parametrize("method", ["sorted", "proximity"])
@pytest.mark.parametrize("rate", [0.12, 0.25, 0.5])
def test_sampled_methods_give_each_label_20_to_30_rows_at_the_rate(
    method: str, rate: float
) -> None:
    pairs = _pairs([12, 10, 9, 8, 8, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2] * 4, seed=1)
    synth = make_synthetic(pairs, method=method, rate=rate, seed=3)
    _, counts = np.unique(synth.label, return_counts=True)
    assert counts.min() >= 20 and counts.max() <= 30
    target = rate * len(pairs)
    assert target <= len(synth) < target + 20
    assert np.isin(synth.label, pairs.label).sum() == 0


def test_synthetic_rows_are_midpoints_of_real_rows_of_two_identities() -> None:
    pairs = _pairs([6, 6, 5, 5], seed=2)
    synth = make_synthetic(pairs, method="sorted", rate=0.5, seed=0)
    sums = (pairs.new[:, None, :] + pairs.new[None, :, :]) / 2
    for row in synth.new:
        hits = np.argwhere(np.abs(sums - row).max(axis=2) < 1e-6)
        assert any(pairs.label[i] != pairs.label[j] for i, j in hits)


def test_rate_zero_none_and_reproducible() -> None:
    pairs = _pairs([8, 8, 8, 8])
    assert len(make_synthetic(pairs, method="sorted", rate=0.0)) == 0
    assert len(make_synthetic(pairs, method="none", rate=0.3)) == 0
    a = make_synthetic(pairs, method="sorted", rate=0.5, seed=4)
    b = make_synthetic(pairs, method="sorted", rate=0.5, seed=4)
    np.testing.assert_array_equal(a.new, b.new)


def test_bad_rate_or_method_is_a_clear_error() -> None:
    pairs = _pairs([4, 4])
    with pytest.raises(InvalidInput, match="rate"):
        make_synthetic(pairs, method="sorted", rate=0.6)
    with pytest.raises(InvalidInput, match="unknown interpolation"):
        make_synthetic(pairs, method="mixup", rate=0.1)
