"""service.files: an atomic write replaces the file whole or leaves it as it was; sha256 of a
file equals hashlib's over its bytes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from service.files import atomic_path, file_sha256, write_text_atomically


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_finished_write_replaces_the_file_and_keeps_the_suffix(tmp_path) -> None:
    target = tmp_path / "sub" / "chunk.npz"
    with atomic_path(target, fsync=True) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".npz" and tmp != target
        np.savez(tmp, x=np.arange(3))  # savez would append .npz to another suffix
    with np.load(target) as z:
        assert z["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in target.parent.iterdir()) == ["chunk.npz"]
    assert write_text_atomically(tmp_path / "a.txt", "new").read_text() == "new"


def test_file_sha256_matches_hashlib_over_the_bytes(tmp_path) -> None:
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # several chunks and a tail
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
