"""The pairs contract's optional ``new_flip``: round trip, validation, take/select_split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.contracts import PairsSet, load_pairs, save_pairs
from service.errors import ContractError

N, D_OLD, D_NEW = 6, 5, 4


def _pairs(*, new_flip: bool = True) -> PairsSet:
    rng = np.random.default_rng(0)
    return PairsSet(
        old=rng.standard_normal((N, D_OLD)).astype(np.float32),
        new=rng.standard_normal((N, D_NEW)).astype(np.float32),
        label=np.array([0, 0, 1, 1, 2, 3]),
        name=np.array(["a", "a", "b", "b", "c", "d"]),
        path=np.array([f"p{i}.jpg" for i in range(N)]),
        split=np.array(["bridge", "bridge", "eval", "eval", "bridge", "eval"]),
        extra={"augment": np.array(["none"] * N)},
        new_flip=rng.standard_normal((N, D_NEW)).astype(np.float32) if new_flip else None,
    )


@pytest.mark.parametrize("name", ["pairs.npz", "pairs_dir"])
def test_new_flip_round_trips(tmp_path: Path, name: str) -> None:
    pairs = _pairs()
    assert pairs.new_flip is not None
    loaded = load_pairs(save_pairs(tmp_path / name, pairs))
    assert loaded.new_flip is not None and loaded.new_flip.dtype == np.float32
    np.testing.assert_array_equal(loaded.new_flip, pairs.new_flip)
    assert "new_flip" not in loaded.extra  # a field of its own, not an extra column
    if name == "pairs_dir":  # a directory of .npy stays memory-mapped, new_flip included
        assert isinstance(loaded.new_flip, np.memmap)
        assert not isinstance(load_pairs(tmp_path / name, mmap=False).new_flip, np.memmap)


def test_pairs_without_new_flip_stay_without(tmp_path: Path) -> None:
    loaded = load_pairs(save_pairs(tmp_path / "plain.npz", _pairs(new_flip=False)))
    assert loaded.new_flip is None
    with np.load(tmp_path / "plain.npz") as z:
        assert "new_flip" not in z.files


def test_float64_new_flip_is_read_as_float32(tmp_path: Path) -> None:
    pairs = _pairs()
    assert pairs.new_flip is not None
    arrays = {"old": pairs.old, "new": pairs.new, "label": pairs.label}
    np.savez(tmp_path / "f64.npz", **arrays, new_flip=pairs.new_flip.astype(np.float64))
    loaded = load_pairs(tmp_path / "f64.npz")
    assert loaded.new_flip is not None and loaded.new_flip.dtype == np.float32
    np.testing.assert_allclose(loaded.new_flip, pairs.new_flip)


@pytest.mark.parametrize(
    ("new_flip", "message"),
    [
        (np.zeros((N, D_NEW + 1), np.float32), r"'new_flip' must be .* shaped like 'new' \(6, 4\)"),
        (np.zeros((N, D_NEW, 1), np.float32), "shaped like 'new'"),
        (np.zeros((N - 1, D_NEW), np.float32), "'new_flip' has 5 rows but 'label' has 6"),
        (np.zeros((N, D_NEW), np.int32), "floating-point"),
        (np.full((N, D_NEW), np.nan, np.float32), "'new_flip' has NaN/inf in 6 row"),
        (np.full((N, D_NEW), 1e300), "'new_flip' has NaN/inf"),  # not float32-castable
    ],
)
def test_bad_new_flip_is_one_clear_line(tmp_path: Path, new_flip: np.ndarray, message: str) -> None:
    pairs = _pairs()
    arrays = {"old": pairs.old, "new": pairs.new, "label": pairs.label, "new_flip": new_flip}
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ContractError, match=message) as caught:
        load_pairs(tmp_path / "bad.npz")
    assert "\n" not in str(caught.value)
    if new_flip.dtype == np.float32:  # save_pairs casts to float32 first, then checks the same
        with pytest.raises(ContractError, match=message):
            save_pairs(
                tmp_path / "out.npz",
                PairsSet(old=pairs.old, new=pairs.new, label=pairs.label, new_flip=new_flip),
            )


def test_take_and_select_split_keep_new_flip_row_aligned() -> None:
    pairs = _pairs()
    assert pairs.new_flip is not None
    rows = np.array([4, 1, 3])
    taken = pairs.take(rows)
    assert taken.new_flip is not None and taken.new_flip.flags.c_contiguous
    np.testing.assert_array_equal(taken.new_flip, pairs.new_flip[rows])
    np.testing.assert_array_equal(taken.new, pairs.new[rows])
    masked = pairs.take(pairs.label == 1)
    assert masked.new_flip is not None
    np.testing.assert_array_equal(masked.new_flip, pairs.new_flip[[2, 3]])
    for split in ("bridge", "eval"):
        part = pairs.select_split(split)
        expected = np.flatnonzero(pairs.split == split)
        assert part.new_flip is not None and part.path is not None
        np.testing.assert_array_equal(part.new_flip, pairs.new_flip[expected])
        np.testing.assert_array_equal(part.path, pairs.path[expected])  # type: ignore[index]
    assert _pairs(new_flip=False).take(rows).new_flip is None
