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

from .conftest import TinyBackboneFactory

IDENTITIES = {"alice": 4, "bob": 3, "carol": 1, "dave": 3}  # 11 images


@pytest.fixture
def crops_dir(tmp_path: Path) -> Path:
    """Synthetic 112x112 "aligned crops" under DIR/<identity>/<image>."""
    root = tmp_path / "aligned"
    rng = np.random.default_rng(0)
    for identity, count in IDENTITIES.items():
        (root / identity).mkdir(parents=True)
        for k in range(count):
            pixels = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / identity / f"{identity}_{k:04d}.png")
    (root / "alice" / "notes.txt").write_text("not an image, ignored")
    return root


@pytest.fixture
def sides(tiny_backbone: TinyBackboneFactory) -> tuple[str, str]:
    old = tiny_backbone("old-tiny", dim=8, seed=1)
    new = tiny_backbone("new-tiny", dim=6, seed=2, layout="NHWC")
    return str(old), str(new)


def run(crops_dir: Path, sides: tuple[str, str], output: Path, **options: object):
    return extract.extract_pairs(
        images_dir=crops_dir,
        old=sides[0],
        new=sides[1],
        output=output,
        aligned=True,
        batch_size=4,
        chunk_size=3,
        progress=False,
        **options,  # type: ignore[arg-type]
    )


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


# ---------------------------------------------------------------------------------------------
# new_flip: extraction (default) and `facebridge pairs add-flip`
# ---------------------------------------------------------------------------------------------
def _mirror_embeddings(manifest: str, images: Path, paths: np.ndarray) -> np.ndarray:
    """Naive reference: decode each crop, mirror it left-right by hand, embed it alone."""
    from service.inference.backbone import OnnxBackbone
    from service.inference.images import read_image_file

    backbone = OnnxBackbone(manifest)
    return np.concatenate(
        [backbone.embed(read_image_file(images / str(p))[:, ::-1].copy()) for p in paths]
    )


def test_extraction_writes_new_flip_by_default(
    crops_dir: Path, sides: tuple[str, str], tmp_path: Path
) -> None:
    pairs = load_pairs(run(crops_dir, sides, tmp_path / "flip.npz", augment="flip").output)
    assert pairs.new_flip is not None and pairs.new_flip.shape == pairs.new.shape
    original = pairs.extra["augment"] == "none"
    expected = _mirror_embeddings(sides[1], crops_dir, pairs.path[original])
    np.testing.assert_allclose(pairs.new_flip[original], expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(pairs.new_flip, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(pairs.new_flip, pairs.new)  # the raw mirror, not new, not an average
    # A "flip" row's crop is the mirror: its mirror is the original crop again.
    flipped = pairs.extra["augment"] == "flip"
    np.testing.assert_allclose(pairs.new_flip[flipped], pairs.new[original], atol=1e-5)
    np.testing.assert_allclose(pairs.new[flipped], pairs.new_flip[original], atol=1e-5)

    plain = load_pairs(run(crops_dir, sides, tmp_path / "plain.npz", new_flip=False).output)
    assert plain.new_flip is None
    np.testing.assert_allclose(plain.new, pairs.new[original], atol=1e-6)


def test_a_run_started_without_new_flip_is_finished_without_it(
    crops_dir: Path, sides: tuple[str, str], tmp_path: Path
) -> None:
    output = tmp_path / "old-run.npz"
    run(crops_dir, sides, output, new_flip=False, stop_after_chunks=2)  # as before new_flip
    with pytest.raises(ContractError, match=r"started without new_flip.*--no-new-flip") as caught:
        run(crops_dir, sides, output)  # the default (new_flip on) never mixes with those chunks
    assert "\n" not in str(caught.value)
    result = run(crops_dir, sides, output, new_flip=False)
    assert result.chunks_done_before == 2 and load_pairs(output).new_flip is None

    started_with = tmp_path / "new-run.npz"
    run(crops_dir, sides, started_with, stop_after_chunks=1)
    with pytest.raises(ContractError, match="started with new_flip: finish it with --new-flip"):
        run(crops_dir, sides, started_with, new_flip=False)


def test_join_refuses_chunks_with_and_without_new_flip(tmp_path: Path) -> None:
    def chunk(k: int, *, flip: bool) -> None:
        arrays = {
            "old": np.ones((2, 3), np.float32),
            "new": np.ones((2, 2), np.float32),
            "label": np.array([k, k]),
            "name": np.array(["a", "a"]),
            "path": np.array([f"a/{k}0.png", f"a/{k}1.png"]),
        }
        if flip:
            arrays["new_flip"] = np.ones((2, 2), np.float32)
        chunks.write_chunk(chunks.chunk_path(tmp_path, k), arrays)

    chunk(0, flip=True)
    chunk(1, flip=False)
    with pytest.raises(ContractError, match=r"chunk_000001\.npz differs .* in new_flip"):
        chunks.join_chunks(tmp_path, 2)
    chunk(1, flip=True)
    joined = chunks.join_chunks(tmp_path, 2)
    assert joined.new_flip is not None and joined.new_flip.shape == (4, 2)
    assert "new_flip" not in joined.extra


def test_new_flip_needs_an_onnx_new_side(crops_dir: Path, sides: tuple[str, str]) -> None:
    with pytest.raises(InvalidInput, match="--no-new-flip"):
        extract.extract_pairs(
            images_dir=crops_dir, old=sides[0], new="dlib", output=crops_dir / "x.npz"
        )


def test_add_flip_matches_extraction_and_selects_a_split(
    crops_dir: Path, sides: tuple[str, str], tmp_path: Path
) -> None:
    reference = load_pairs(run(crops_dir, sides, tmp_path / "ref.npz", eval_fraction=0.5).output)
    source = run(crops_dir, sides, tmp_path / "in.npz", eval_fraction=0.5, new_flip=False).output
    before = source.read_bytes()
    runner = CliRunner()
    args = ["add-flip", "--pairs", str(source), "--images", str(crops_dir)]
    args += ["--backbone", sides[1], "--batch", "4", "--no-progress"]
    result = runner.invoke(app, [*args, "--output", str(tmp_path / "all.npz")])
    assert result.exit_code == 0, result.output
    assert "wrote 11 rows with new_flip" in result.output
    added = load_pairs(tmp_path / "all.npz")
    assert added.new_flip is not None and reference.new_flip is not None
    np.testing.assert_array_equal(added.path, reference.path)
    np.testing.assert_allclose(added.new_flip, reference.new_flip, atol=1e-5)
    np.testing.assert_array_equal(added.old, reference.old)  # every other column kept
    assert source.read_bytes() == before  # the input is never written

    result = runner.invoke(app, [*args, "--output", str(tmp_path / "ev"), "--split", "eval"])
    assert result.exit_code == 0, result.output
    evaluated = load_pairs(tmp_path / "ev")
    eval_rows = reference.split == "eval"
    assert evaluated.split is not None and set(evaluated.split) == {"eval"}
    assert len(evaluated) == int(eval_rows.sum()) > 0
    np.testing.assert_allclose(evaluated.new_flip, reference.new_flip[eval_rows], atol=1e-5)  # type: ignore[index]


def test_add_flip_errors_are_one_line(
    crops_dir: Path, sides: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    source = run(crops_dir, sides, tmp_path / "in.npz", new_flip=False).output
    args = ["pairs", "add-flip", "--pairs", str(source), "--backbone", sides[1], "--no-progress"]
    missing = crops_dir / "bob" / "bob_0002.png"
    missing.unlink()
    assert main([*args, "--images", str(crops_dir), "--output", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: image not found: {missing} (a row's path)"
    assert not (tmp_path / "o.npz").exists()
    assert main([*args, "--images", str(crops_dir), "--output", str(source)]) == 2
    assert "must differ from --pairs" in capsys.readouterr().err
    augmented = run(crops_dir, sides, tmp_path / "aug.npz", augment="shift", new_flip=False)
    with pytest.raises(InvalidInput, match=r"augmented .*'shift'"):
        from training.data.flip import add_flip

        add_flip(
            pairs_path=augmented.output,
            images_dir=crops_dir,
            backbone_manifest=sides[1],
            output=tmp_path / "x.npz",
            progress=False,
        )


@pytest.mark.kit
def test_kit_add_flip_reproduces_new_and_embeds_the_mirror(
    kit_dir: Path, kit_manifest: Path, kit_pairs_file: Path
) -> None:
    """On kit rows: the unmirrored aligned crop re-embedded = the kit's ``new`` (cosine ~1), and
    new_flip = the mirror's embedding; from photos (aligned with the rows' own landmarks5)
    too, up to the JPEG re-encoding of the kit's aligned/ crops."""
    from service.inference.backbone import OnnxBackbone
    from training.data.flip import mirrored_embeddings

    kit = load_pairs(kit_pairs_file)
    rows = np.flatnonzero(kit.extra["detected"])[::250]  # 28 rows, bridge and eval
    sample = kit.take(rows)
    backbone = OnnxBackbone(kit_manifest, batch_size=16)
    new_flip, plain = mirrored_embeddings(
        pairs=sample,
        images_dir=kit_dir / "lfw" / "aligned",
        backbone=backbone,
        with_plain=True,
        progress=False,
    )
    assert plain is not None
    assert (plain * sample.new).sum(1).min() > 0.9999
    reference = _mirror_embeddings(str(kit_manifest), kit_dir / "lfw" / "aligned", sample.path)
    assert (new_flip * reference).sum(1).min() > 0.9999
    assert 0.5 < (new_flip * sample.new).sum(1).mean() < 0.999  # a different view, same face
    photo_flip, photo_plain = mirrored_embeddings(
        pairs=sample.take(np.arange(6)),
        images_dir=kit_dir / "lfw" / "photos",
        backbone=backbone,
        with_plain=True,
        progress=False,
    )
    assert photo_plain is not None
    assert (photo_plain * sample.new[:6]).sum(1).min() > 0.99
    assert (photo_flip * new_flip[:6]).sum(1).min() > 0.99
