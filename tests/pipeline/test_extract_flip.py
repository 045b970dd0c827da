"""Paired extraction, new_flip: written by extraction (default) and by `pairs add-flip`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import training.data.chunks as chunks
import training.data.extract as extract
from service.contracts import load_pairs
from service.errors import ContractError, InvalidInput
from training.data.cli import app

from .conftest import run


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
