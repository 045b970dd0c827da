"""Paired extraction: complete, labelled, augmented, and resumable without duplicated rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import training.data.chunks as chunks
import training.data.extract as extract
import training.data.samples as samples
from service.contracts import load_pairs
from service.errors import ContractError, InvalidInput
from service.inference.detect import dlib_available
from training.data.cli import app

from .conftest import IDENTITIES, run


def test_extraction_writes_the_pairs_contract(
    crops_dir: Path, sides: tuple[str, str], tmp_path: Path
) -> None:
    result = run(crops_dir, sides, tmp_path / "pairs")
    pairs = load_pairs(result.output)
    assert len(pairs) == result.rows == 11 and result.skipped == []
    assert pairs.old_dim == 8 and pairs.new_dim == 6
    assert list(pairs.name) == sorted(pairs.name)
    assert dict(zip(*np.unique(pairs.name, return_counts=True), strict=True)) == IDENTITIES
    assert [int(pairs.label[pairs.name == n][0]) for n in sorted(IDENTITIES)] == [0, 1, 2, 3]
    assert pairs.path[0] == "alice/alice_0000.png"
    assert set(pairs.extra["augment"]) == {"none"}
    np.testing.assert_allclose(np.linalg.norm(pairs.new, axis=1), 1.0, atol=1e-5)
    assert not (tmp_path / "pairs.chunks").exists()  # joined and cleaned up


def test_interrupted_extraction_resumes_without_duplicates(
    crops_dir: Path, sides: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = load_pairs(run(crops_dir, sides, tmp_path / "reference.npz").output)

    # Interrupt (Ctrl-C) while writing the third of four chunks.
    output = tmp_path / "resumed.npz"
    real_write = chunks.write_chunk
    written: list[Path] = []

    def write_then_interrupt(path: Path, arrays: dict[str, np.ndarray]) -> None:
        if len(written) == 2:
            raise KeyboardInterrupt
        real_write(path, arrays)
        written.append(path)

    monkeypatch.setattr(extract, "write_chunk", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(crops_dir, sides, output)
    monkeypatch.setattr(extract, "write_chunk", real_write)
    chunk_dir = tmp_path / "resumed.npz.chunks"
    assert sorted(p.name for p in chunk_dir.glob("chunk_*.npz")) == [p.name for p in written]
    assert not output.exists()
    (chunk_dir / "chunk_000002.tmp.npz").write_bytes(b"half-written garbage")  # a crash mid-write

    # A different setting must not be mixed into the interrupted run.
    with pytest.raises(ContractError, match="different settings"):
        run(crops_dir, sides, output, augment="flip")

    result = run(crops_dir, sides, output)
    assert result.chunks_done_before == 2
    pairs = load_pairs(output)
    assert len(pairs) == 11 and len(set(pairs.path)) == 11
    np.testing.assert_array_equal(pairs.path, reference.path)
    np.testing.assert_array_equal(pairs.label, reference.label)
    np.testing.assert_allclose(pairs.old, reference.old, atol=1e-6)
    np.testing.assert_allclose(pairs.new, reference.new, atol=1e-6)

    with pytest.raises(InvalidInput, match="already exists"):
        run(crops_dir, sides, output)


def test_augmentation_adds_marked_rows(
    crops_dir: Path, sides: tuple[str, str], tmp_path: Path
) -> None:
    pairs = load_pairs(run(crops_dir, sides, tmp_path / "aug.npz", augment="flip,shift").output)
    augment = pairs.extra["augment"]
    assert len(pairs) == 33
    assert {a: int((augment == a).sum()) for a in ("none", "flip", "shift")} == {
        "none": 11, "flip": 11, "shift": 11,
    }  # fmt: skip
    for kind in ("flip", "shift"):
        np.testing.assert_array_equal(pairs.path[augment == kind], pairs.path[augment == "none"])
        assert not np.allclose(pairs.new[augment == kind], pairs.new[augment == "none"])
    with pytest.raises(InvalidInput, match="unknown augmentation"):
        run(crops_dir, sides, tmp_path / "bad.npz", augment="rotate")


def test_bad_images_are_skipped_and_reported(
    crops_dir: Path, sides: tuple[str, str], tmp_path: Path
) -> None:
    (crops_dir / "bob" / "bob_0001.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    Image.new("RGB", (64, 64)).save(crops_dir / "dave" / "dave_0002.png")
    result = run(crops_dir, sides, tmp_path / "pairs.npz")
    assert result.rows == 9
    reasons = dict(result.skipped)
    assert set(reasons) == {"bob/bob_0001.png", "dave/dave_0002.png"}
    assert "expects 112x112 crops" in reasons["dave/dave_0002.png"]


def test_cli_extract_and_dlib_needs_photos(
    crops_dir: Path, sides: tuple[str, str], tmp_path: Path
) -> None:
    runner = CliRunner()
    args = ["extract", "--images", str(crops_dir), "--old", sides[0], "--new", sides[1]]
    out = tmp_path / "cli.npz"
    result = runner.invoke(app, [*args, "--output", str(out), "--aligned", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "wrote 11 rows from 11 images" in result.output
    assert len(load_pairs(out)) == 11
    with pytest.raises(InvalidInput, match="--photos"):
        extract.extract_pairs(
            images_dir=crops_dir, old="dlib", new=sides[1], output=tmp_path / "x.npz", aligned=True
        )


@pytest.mark.kit
@pytest.mark.dlib
@pytest.mark.skipif(not dlib_available(), reason="dlib or face_recognition_models not installed")
def test_kit_photos_dlib_and_mobilefacenet_reproduce_kit_pairs(
    kit_dir: Path, kit_manifest: Path, tmp_path: Path
) -> None:
    """Photos -> dlib (old) + detect/align/MobileFaceNet (new) = the kit's own rows."""
    with np.load(kit_dir / "lfw" / "pairs.npz") as z:
        kit = {k: z[k] for k in ("path", "old", "new", "detected")}
    rows = np.flatnonzero(kit["detected"])[[3, 40, 41, 2000]]
    photos = tmp_path / "photos"
    for i in rows:
        target = photos / kit["path"][i]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(kit_dir / "lfw" / "photos" / kit["path"][i], target)
    result = extract.extract_pairs(
        images_dir=photos,
        old="dlib",
        new=str(kit_manifest),
        output=tmp_path / "kit.npz",
        augment="flip,shift",
        chunk_size=2,
        progress=False,
    )
    pairs = load_pairs(result.output)
    assert len(pairs) == 12
    original = pairs.extra["augment"] == "none"
    index = {p: i for i, p in enumerate(kit["path"])}
    kit_rows = [index[p] for p in pairs.path[original]]
    old, kit_old = pairs.old[original], kit["old"][kit_rows]
    cos_old = (old * kit_old).sum(1) / np.linalg.norm(old, axis=1) / np.linalg.norm(kit_old, axis=1)
    assert cos_old.min() > 0.9999
    assert (pairs.new[original] * kit["new"][kit_rows]).sum(1).min() > 0.99
    assert pairs.extra["landmarks5"].shape == (12, 5, 2)
    for kind in ("flip", "shift"):  # both models saw a changed face, still the same person
        rows = pairs.extra["augment"] == kind
        np.testing.assert_array_equal(pairs.path[rows], pairs.path[original])
        a, b = pairs.old[rows], pairs.old[original]
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.9 and cos.max() < 0.99999
        assert (pairs.new[rows] * pairs.new[original]).sum(1).min() > 0.8


def test_eval_fraction_splits_by_identity(
    crops_dir: Path, sides: tuple[str, str], tmp_path: Path
) -> None:
    pairs = load_pairs(run(crops_dir, sides, tmp_path / "split.npz", eval_fraction=0.5).output)
    assert pairs.split is not None and set(pairs.split) <= {"bridge", "eval"}
    for name in IDENTITIES:
        assert len(set(pairs.split[pairs.name == name])) == 1  # never on both sides
    expected = {n: samples.split_for_identity(n, eval_fraction=0.5) for n in IDENTITIES}
    assert {str(n): str(s) for n, s in zip(pairs.name, pairs.split, strict=True)} == expected


def test_only_bridge_identities_are_augmented(
    crops_dir: Path, sides: tuple[str, str], tmp_path: Path
) -> None:
    pairs = load_pairs(
        run(crops_dir, sides, tmp_path / "s.npz", eval_fraction=0.5, augment="flip").output
    )
    assert pairs.split is not None
    augmented = pairs.extra["augment"] != "none"
    assert augmented.any() and set(pairs.split[augmented]) == {"bridge"}
    assert (pairs.extra["augment"][pairs.split == "eval"] == "none").all()
    assert (pairs.split == "eval").sum() == len(set(pairs.path[pairs.split == "eval"]))


@pytest.mark.kit
@pytest.mark.dlib
@pytest.mark.skipif(not dlib_available(), reason="dlib or face_recognition_models not installed")
def test_kit_aligned_crops_with_photos_for_dlib(
    kit_dir: Path, kit_manifest: Path, tmp_path: Path
) -> None:
    """--aligned crops for the ONNX side + --photos for dlib: both exactly the kit's vectors."""
    with np.load(kit_dir / "lfw" / "pairs.npz") as z:
        kit = {k: z[k] for k in ("path", "old", "new", "detected")}
    rows = np.flatnonzero(kit["detected"])[[7, 1234]]
    for folder in ("aligned", "photos"):
        for i in rows:
            target = tmp_path / folder / kit["path"][i]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(kit_dir / "lfw" / folder / kit["path"][i], target)
    result = extract.extract_pairs(
        images_dir=tmp_path / "aligned",
        photos_dir=tmp_path / "photos",
        old="dlib",
        new=str(kit_manifest),
        output=tmp_path / "pairs.npz",
        aligned=True,
        augment="shift",
        progress=False,
    )
    pairs = load_pairs(result.output)
    original = pairs.extra["augment"] == "none"
    assert original.sum() == 2 and len(pairs) == 4
    index = {p: i for i, p in enumerate(kit["path"])}
    kit_rows = [index[p] for p in pairs.path[original]]
    old, kit_old = pairs.old[original], kit["old"][kit_rows]
    cos_old = (old * kit_old).sum(1) / np.linalg.norm(old, axis=1) / np.linalg.norm(kit_old, axis=1)
    assert cos_old.min() > 0.9999
    assert (pairs.new[original] * kit["new"][kit_rows]).sum(1).min() > 0.9999  # same crop bytes
    shifted = pairs.extra["augment"] == "shift"
    assert 0.8 < (pairs.new[shifted] * pairs.new[original]).sum(1).max() < 0.9999
