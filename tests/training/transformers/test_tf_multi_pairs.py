"""Several ``--pairs`` files as one fit set (training.transformers.multi_pairs), against a naive
row-by-row reference, and ``facebridge transformer fit --pairs A --pairs B`` end to end."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from service.contracts import PairsSet, save_pairs
from service.errors import ContractError, InvalidInput
from service.vectors import l2_normalize
from training.transformers.cli import app
from training.transformers.closed_form import ridge_map
from training.transformers.multi_pairs import combine_pairs, select_rows


def _named(pairs: PairsSet, prefix: str) -> PairsSet:
    return replace(pairs, name=np.array([f"{prefix}{int(lab)}" for lab in pairs.label]))


def _naive_rows(parts: list[PairsSet]) -> list[tuple[np.ndarray, np.ndarray, object]]:
    """(old, new, identity key) per row, one file after the other: the rule written out."""
    rows = []
    for k, part in enumerate(parts):
        for i in range(len(part)):
            key = ("name", part.name[i]) if part.name is not None else ("file", k, part.label[i])
            rows.append((part.old[i], part.new[i], key))
    return rows


def _assert_same_as_naive(combined: PairsSet, parts: list[PairsSet]) -> None:
    rows = _naive_rows(parts)
    assert len(combined) == len(rows)
    np.testing.assert_array_equal(combined.old, np.array([r[0] for r in rows]))
    np.testing.assert_array_equal(combined.new, np.array([r[1] for r in rows]))
    keys = [r[2] for r in rows]
    for i in range(0, len(rows), 7):  # same label <=> same identity key, for every pair (i, j)
        same_key = np.array([keys[i] == keys[j] for j in range(len(rows))])
        np.testing.assert_array_equal(combined.label == combined.label[i], same_key)


def test_named_files_share_identities_by_name_and_unnamed_files_stay_apart(make_pairs) -> None:
    kit = _named(make_pairs(n_ids=12, seed=0), "p")
    captures = _named(make_pairs(n_ids=6, per_id=3, seed=1), "p")  # p0..p5 are kit people too
    strangers = make_pairs(n_ids=5, per_id=2, seed=2)  # no names: labels 0..4 of its own
    parts = [kit, captures, strangers]
    combined = combine_pairs(parts, sources=["a", "b", "c"])
    _assert_same_as_naive(combined.pairs, parts)
    np.testing.assert_array_equal(combined.source, np.repeat([0, 1, 2], [60, 18, 10]))
    assert np.unique(combined.pairs.label).size == 12 + 5
    assert combined.pairs.name is None  # not every file has names
    np.testing.assert_array_equal(combined.pairs.path, np.concatenate([p.path for p in parts]))


def test_unnamed_files_never_merge_identities(make_pairs) -> None:
    parts = [make_pairs(n_ids=8, seed=0), make_pairs(n_ids=8, seed=1)]  # both use labels 0..7
    combined = combine_pairs(parts, sources=["a", "b"])
    _assert_same_as_naive(combined.pairs, parts)
    assert np.unique(combined.pairs.label).size == 16


def test_repeat_oversamples_later_files_like_a_weighted_fit(make_pairs) -> None:
    kit, extra = make_pairs(n_ids=10, seed=0), make_pairs(n_ids=4, per_id=3, seed=3)
    combined = combine_pairs([kit, extra], sources=["a", "b"])
    train = combined.training(repeat=3)
    naive_new = [l2_normalize(kit.new)[i] for i in range(len(kit))]
    naive_new += [v for v in l2_normalize(extra.new) for _ in range(3)]
    np.testing.assert_allclose(train.new, np.array(naive_new), rtol=0, atol=1e-7)
    assert len(train) == len(kit) + 3 * len(extra)
    # Oversampling N times = weight N in least squares (lam=0: the penalty does not scale).
    weight = np.r_[np.ones(len(kit)), np.full(len(extra), 3.0)]
    plain = combined.training(repeat=1)
    expected = ridge_map(plain.new, plain.old, lam=0.0, sample_weight=weight)
    got = ridge_map(train.new, train.old, lam=0.0)
    np.testing.assert_allclose(got[0], expected[0], atol=2e-4)
    np.testing.assert_allclose(got[1], expected[1], atol=2e-4)
    with pytest.raises(InvalidInput, match="repeat must be >= 1"):
        combined.training(repeat=0)


def test_dims_must_match_the_first_file_and_new_flip_needs_every_file(make_pairs) -> None:
    kit = make_pairs(seed=0)
    with pytest.raises(InvalidInput, match=r"b\.npz: old/new dims 16/9 differ from a\.npz"):
        combine_pairs([kit, make_pairs(d_new=9)], sources=["a.npz", "b.npz"])
    flipped = replace(kit, new_flip=kit.new[::-1].copy())
    combined = combine_pairs([flipped, make_pairs(seed=1)], sources=["a", "b"])
    assert combined.pairs.new_flip is None and "new_flip dropped" in combined.notes[0]
    both = combine_pairs([flipped, flipped], sources=["a", "b"])
    np.testing.assert_array_equal(both.pairs.new_flip, np.concatenate([kit.new[::-1]] * 2))
    assert both.notes == ()


def test_select_rows_takes_the_bridge_rows_or_every_row(pairs: PairsSet) -> None:
    assert len(select_rows(pairs, "bridge", False)) == int((pairs.split == "bridge").sum())
    assert len(select_rows(pairs, "bridge", True)) == len(pairs)
    assert len(select_rows(replace(pairs, split=None), "bridge", False)) == len(pairs)


def test_fit_command_with_two_pairs_files(make_pairs, tmp_path: Path) -> None:
    kit = _named(make_pairs(n_ids=24, seed=0), "p")
    extra = replace(_named(make_pairs(n_ids=6, per_id=3, seed=4), "q"), split=None)
    a, b = save_pairs(tmp_path / "a.npz", kit), save_pairs(tmp_path / "b.npz", extra)
    out = tmp_path / "t.onnx"
    args = ["fit", "--pairs", str(a), "--pairs", str(b), "--output", str(out), "--recipe", "ridge"]
    result = CliRunner().invoke(app, [*args, "--no-progress", "--pairs-repeat", "2"])
    assert result.exit_code == 0, result.output
    n_bridge = int((kit.split == "bridge").sum())
    assert f"fit rows per --pairs file: [{n_bridge}, {len(extra)}] (later files x2)" in (
        result.output
    )
    assert f"on {n_bridge + 2 * len(extra)} rows" in result.output
    assert "eval split: eval_top1=" in result.output and "WARNING" not in result.output
    # Captures of people in the first file's eval split: said, not hidden.
    leak = replace(_named(make_pairs(n_ids=6, per_id=3, seed=4), "p"), split=None)
    c = save_pairs(tmp_path / "c.npz", leak)
    result = CliRunner().invoke(app, [*args[:3], "--pairs", str(c), *args[5:], "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "identities of the later --pairs files are in the first file's eval" in result.output


def test_fit_command_validates_every_pairs_file(pairs: PairsSet, tmp_path: Path) -> None:
    a = save_pairs(tmp_path / "a.npz", pairs)
    bad = pairs.old.copy()
    bad[3, 0] = np.nan
    b = tmp_path / "b.npz"  # written by hand: save_pairs refuses it
    np.savez(b, old=bad, new=pairs.new, label=pairs.label)
    args = ["fit", "--pairs", str(a), "--pairs", str(b), "--output", str(tmp_path / "t.onnx")]
    with pytest.raises(ContractError, match=r"b\.npz: 'old' has NaN/inf in 1 row"):
        CliRunner().invoke(app, [*args, "--recipe", "ridge"], catch_exceptions=False)
