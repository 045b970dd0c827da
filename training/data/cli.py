"""``facebridge pairs ...``: build pairs files from image folders (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Build pairs files: every image seen by the old and the new model.", no_args_is_help=True
)


@app.callback()
def pairs_callback() -> None:
    """Build pairs files: every image seen by the old and the new model."""


BACKBONE_HELP = "an ONNX backbone manifest (.json) or 'dlib' (face_recognition's descriptor)"


@app.command("extract")
def extract_command(
    images: Annotated[Path, typer.Option(help="image folder: DIR/<identity>/<image>")],
    old: Annotated[str, typer.Option(help=f"old model: {BACKBONE_HELP}")],
    new: Annotated[str, typer.Option(help=f"new model: {BACKBONE_HELP}")],
    output: Annotated[Path, typer.Option(help="pairs file: NAME.npz, or a directory of .npy")],
    aligned: Annotated[
        bool, typer.Option(help="the images are already 112x112 ArcFace crops (no detection)")
    ] = False,
    photos: Annotated[
        Path | None,
        typer.Option(help="with --aligned and a dlib side: the photos, same relative paths"),
    ] = None,
    augment: Annotated[
        str, typer.Option(help="extra rows per image: comma list of flip, shift (or none)")
    ] = "none",
    batch_size: Annotated[int, typer.Option(help="images per ONNX Runtime call")] = 64,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads (and decoders)")] = 1,
    chunk_size: Annotated[int, typer.Option(help="images per resumable chunk")] = 512,
    limit: Annotated[int | None, typer.Option(help="only the first N images (a quick try)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
    keep_chunks: Annotated[bool, typer.Option(help="keep OUTPUT.chunks/ after joining")] = False,
    eval_fraction: Annotated[
        float,
        typer.Option(help="put this fraction of identities in split=eval (rest: bridge); 0 = none"),
    ] = 0.0,
    upsample: Annotated[
        int, typer.Option(help="dlib detector upsampling (0 = as the kit; 1 finds small faces)")
    ] = 0,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    new_flip: Annotated[
        bool,
        typer.Option(
            "--new-flip/--no-new-flip",
            help="also store new_flip: the new model's embedding of each crop mirrored "
            "(same backbone call; for flip-averaged queries)",
        ),
    ] = True,
) -> None:
    """Embed every image with both models; resumable (rerun the same command after a stop)."""
    from training.data.extract import extract_pairs

    result = extract_pairs(
        images_dir=images,
        old=old,
        new=new,
        output=output,
        aligned=aligned,
        photos_dir=photos,
        augment=augment,
        batch_size=batch_size,
        threads=threads,
        chunk_size=chunk_size,
        limit=limit,
        overwrite=overwrite,
        keep_chunks=keep_chunks,
        eval_fraction=eval_fraction,
        detector_upsample=upsample,
        progress=progress,
        new_flip=new_flip,
    )
    if result.chunks_done_before:
        typer.echo(f"resumed: {result.chunks_done_before} chunk(s) were already done")
    typer.echo(
        f"wrote {result.rows} rows from {result.images} images to {result.output} "
        f"({result.images_per_second:.1f} images/s)"
    )
    if result.skipped:
        typer.echo(f"skipped {len(result.skipped)} image(s), e.g.:")
        for relpath, reason in result.skipped[:5]:
            typer.echo(f"  {relpath}: {reason}")


@app.command("add-flip")
def add_flip_command(
    pairs: Annotated[Path, typer.Option(help="an existing pairs file (never written to)")],
    images: Annotated[
        Path,
        typer.Option(help="the images of its rows: DIR/<path> (112x112 crops, or photos)"),
    ],
    backbone: Annotated[
        Path, typer.Option(help="the NEW model's backbone manifest (.json), the one that made new")
    ],
    output: Annotated[Path, typer.Option(help="pairs file to write: NAME.npz or a directory")],
    split: Annotated[
        str,
        typer.Option(help="which rows to keep and embed: bridge, eval or all"),
    ] = "all",
    batch: Annotated[int, typer.Option(help="images per ONNX Runtime call")] = 64,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads")] = 1,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Write OUTPUT = the (selected) rows of PAIRS + new_flip (each image mirrored, embedded)."""
    from service.contracts import SPLIT_BRIDGE, SPLIT_EVAL
    from service.errors import InvalidInput
    from training.data.flip import add_flip

    choices = {"all": None, SPLIT_BRIDGE: SPLIT_BRIDGE, SPLIT_EVAL: SPLIT_EVAL}
    if split not in choices:
        raise InvalidInput(f"--split must be one of {', '.join(choices)}, got {split!r}")
    result = add_flip(
        pairs_path=pairs,
        images_dir=images,
        backbone_manifest=backbone,
        output=output,
        split=choices[split],
        batch_size=batch,
        threads=threads,
        overwrite=overwrite,
        progress=progress,
    )
    note = " (the input's new_flip was recomputed)" if result.replaced else ""
    typer.echo(
        f"wrote {result.rows} rows with new_flip to {result.output}{note} "
        f"in {result.seconds:.1f} s ({result.rows_per_second:.1f} images/s)"
    )
