"""Paired extraction: every image of a folder seen by an old and a new model -> a pairs file.

Images live under ``DIR/<identity>/<image>``. Each side is an ONNX backbone (its manifest path)
or ``dlib`` (the face_recognition library's descriptor, which needs the photo + a detection).

- Photos (default): decode -> dlib detection (largest face) -> ArcFace alignment for ONNX sides;
  the dlib side uses the same detection on the photo.
- ``aligned=True``: the images are already 112 x 112 crops (the kit's ``aligned/``) and go
  straight to ONNX sides. A dlib side then needs the photos: ``photos_dir`` with the same
  relative paths (the kit's ``photos/``).
- ``new_flip=True`` (default): every row also gets ``new_flip``, the new backbone's embedding of
  the row's crop mirrored left-right, from the same backbone call as ``new``
  (:func:`training.data.flip.embed_with_mirror`); see service.contracts.PairsSet.

Work is done in chunks of images written atomically to ``<output>.chunks/``; a restarted run
skips finished chunks (no duplicated rows) and refuses to mix settings (a run started without
``new_flip`` is finished with ``new_flip=False``, never mixed with chunks that have it). When all
chunks exist they are joined and written with :func:`service.contracts.save_pairs` (``.npz`` for
a path ending in .npz, else a directory of ``.npy``). Vectors are stored as the models give
them: ONNX sides come from :class:`OnnxBackbone` (normalised there, its one place), dlib raw
(norm ~1.4); training normalises both sides once at load. Torch-free.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.contracts import PAIRS_NEW_FLIP, save_pairs
from service.errors import ContractError, InvalidInput
from service.inference.detect import DlibDetector
from training.data.chunks import (
    ExtractionResult,
    check_or_write_state,
    chunk_dir_for,
    chunk_path,
    embed_chunk,
    join_chunks,
    prepare_chunk,
    progress_bar,
    read_skipped,
    run_state,
    write_chunk,
)
from training.data.samples import (
    DLIB_SPEC,
    SHIFT_FRACTION,
    ImageRecord,
    Preparer,
    Sample,
    Side,
    list_image_folder,
    open_side,
    parse_augmentations,
)


@dataclass(frozen=True)
class _Options:
    """extract_pairs' options that shape the rows (see its docstring)."""

    old: str
    new: str
    images_root: Path
    aligned: bool
    photos_dir: Path | None
    augmentations: tuple[str, ...]
    batch_size: int
    threads: int
    chunk_size: int
    eval_fraction: float
    new_flip: bool

    def check(self, *, out: Path, overwrite: bool) -> None:
        """InvalidInput for options that cannot work together."""
        if self.batch_size < 1 or self.chunk_size < 1 or self.threads < 1:
            raise InvalidInput("batch-size, chunk-size and threads must be >= 1")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise InvalidInput(f"eval fraction must be in [0, 1), got {self.eval_fraction}")
        if out.exists() and not chunk_dir_for(out).exists() and not overwrite:
            raise InvalidInput(f"{out} already exists; pass --overwrite to replace it")
        if self.aligned and self.wants_dlib and self.photos_dir is None:
            raise InvalidInput(
                "dlib embeds photos with its own alignment, not 112x112 crops: with --aligned "
                "pass --photos DIR (the photos under the same relative paths, e.g. the kit's "
                "photos/)"
            )
        if self.new_flip and self.new == DLIB_SPEC:
            raise InvalidInput(
                "new_flip embeds the mirrored 112x112 crop with the new ONNX backbone; the new "
                "side is dlib: pass --no-new-flip"
            )

    @property
    def wants_dlib(self) -> bool:
        return DLIB_SPEC in (self.old, self.new)


@dataclass
class _Run:
    """One extraction's fixed parts: what to read, the two sides, where the chunks go."""

    options: _Options
    records: list[ImageRecord]
    preparer: Preparer
    old_side: Side
    new_side: Side
    photo_sides: dict[str, Side]
    chunk_dir: Path
    with_faces: bool

    @property
    def chunk_size(self) -> int:
        return self.options.chunk_size

    def chunk_records(self, k: int) -> list[ImageRecord]:
        return self.records[k * self.chunk_size : (k + 1) * self.chunk_size]

    def settings(self) -> dict[str, Any]:
        """What a resumed run must share with the chunks already written."""
        o = self.options
        settings: dict[str, Any] = {
            "images_dir": str(o.images_root.resolve()),
            "photos_dir": None if o.photos_dir is None else str(o.photos_dir.resolve()),
            "old": self.old_side.model_id,
            "new": self.new_side.model_id,
            "aligned": o.aligned,
            "augment": list(o.augmentations),
            "chunk_size": o.chunk_size,
            "shift_fraction": SHIFT_FRACTION,
            "eval_fraction": o.eval_fraction,
        }
        if o.new_flip:  # absent when off, so a run started before new_flip existed still resumes
            settings[PAIRS_NEW_FLIP] = True
        return settings


def _open_detector(*, needed: bool, upsample: int) -> DlibDetector | None:
    if not needed:
        return None
    try:
        return DlibDetector(upsample=upsample)
    except ContractError as exc:
        raise InvalidInput(
            f"photos need a face detector ({exc}); or pass --aligned with 112x112 crops"
        ) from exc


def _open_run(
    o: _Options, *, records: list[ImageRecord], chunk_dir: Path, detector_upsample: int
) -> _Run:
    """The detector (photos, or a dlib side), both sides and the preparer."""
    detector = _open_detector(needed=not o.aligned or o.wants_dlib, upsample=detector_upsample)
    old_side = open_side(o.old, threads=o.threads, batch_size=o.batch_size, detector=detector)
    new_side = open_side(o.new, threads=o.threads, batch_size=o.batch_size, detector=detector)
    preparer = Preparer(
        images_dir=o.images_root,
        aligned=o.aligned,
        need_crop=not (old_side.needs_photo and new_side.needs_photo),
        need_photo=old_side.needs_photo or new_side.needs_photo,
        photos_dir=o.photos_dir,
        detector=detector,
        augment=o.augmentations,
        eval_fraction=o.eval_fraction,
    )
    return _Run(
        options=o,
        records=records,
        preparer=preparer,
        old_side=old_side,
        new_side=new_side,
        photo_sides={
            role: side for role, side in (("old", old_side), ("new", new_side)) if side.needs_photo
        },
        chunk_dir=chunk_dir,
        with_faces=detector is not None,
    )


def _write_chunks(
    run: _Run, todo: list[int], *, progress: bool, initial: int, stop_after: int | None
) -> tuple[int, bool]:
    """Prepare, embed and write the chunks ``todo``; (chunks written, stopped early)."""
    bar = progress_bar(total=len(run.records), initial=initial, enabled=progress)
    skipped_file = run.chunk_dir / "skipped.jsonl"
    # One thread prepares (decodes/detects) the next chunk while this one is embedded; with more
    # threads, decoding itself is parallel too (Pillow releases the GIL while decoding).
    prep_pool = (
        ThreadPoolExecutor(max_workers=max(1, run.options.threads - 1))
        if run.options.threads > 2
        else None
    )
    ahead = ThreadPoolExecutor(max_workers=1)
    written = 0

    def submit(k: int) -> Future[tuple[list[Sample], list[tuple[str, str]]]]:
        return ahead.submit(
            prepare_chunk, run.preparer, run.chunk_records(k), prep_pool, run.photo_sides
        )

    try:
        pending = submit(todo[0]) if todo else None
        for position, k in enumerate(todo):
            assert pending is not None
            samples, skipped = pending.result()
            stop_here = stop_after is not None and written + 1 >= stop_after
            last = position + 1 >= len(todo) or stop_here
            pending = None if last else submit(todo[position + 1])
            arrays = embed_chunk(
                samples,
                old=run.old_side,
                new=run.new_side,
                batch_size=run.options.batch_size,
                with_faces=run.with_faces,
                eval_fraction=run.options.eval_fraction,
                new_flip=run.options.new_flip,
            )
            if skipped:
                with skipped_file.open("a") as fh:
                    for relpath, reason in skipped:
                        fh.write(json.dumps({"chunk": k, "path": relpath, "reason": reason}) + "\n")
            write_chunk(chunk_path(run.chunk_dir, k), arrays)
            written += 1
            bar.update(len(run.chunk_records(k)))
            if stop_here:
                return written, True
    finally:
        bar.close()
        ahead.shutdown(wait=True, cancel_futures=True)
        if prep_pool is not None:
            prep_pool.shutdown(wait=True)
    return written, False


def _finish(
    out: Path, chunk_dir: Path, *, n_chunks: int, keep_chunks: bool
) -> tuple[int, list[tuple[str, str]]]:
    """Join the chunks into ``out``; (rows, skipped images). The chunks go unless kept."""
    pairs = join_chunks(chunk_dir, n_chunks)
    if out.exists() and out.is_dir():
        shutil.rmtree(out)
    save_pairs(out, pairs)
    skipped = read_skipped(chunk_dir / "skipped.jsonl")
    if not keep_chunks:
        shutil.rmtree(chunk_dir)
    return len(pairs), skipped


def extract_pairs(
    *,
    images_dir: str | Path,
    old: str,
    new: str,
    output: str | Path,
    aligned: bool = False,
    photos_dir: str | Path | None = None,
    augment: str | Sequence[str] | None = None,
    batch_size: int = 64,
    threads: int = 1,
    chunk_size: int = 512,
    limit: int | None = None,
    overwrite: bool = False,
    keep_chunks: bool = False,
    eval_fraction: float = 0.0,
    detector_upsample: int = 0,
    progress: bool = True,
    stop_after_chunks: int | None = None,
    new_flip: bool = True,
) -> ExtractionResult:
    """Extract old/new pairs for every image under ``images_dir`` (see module docstring).

    ``new_flip`` also stores the new model's embedding of every row's crop mirrored (the new side
    must be an ONNX backbone); it costs one more backbone run per row on the new side.

    ``stop_after_chunks`` stops after writing that many NEW chunks (to test resumption) and
    returns without joining. Raises :class:`InvalidInput` / :class:`ContractError` on bad options.
    """
    started, out = time.perf_counter(), Path(output)
    options = _Options(
        old=old,
        new=new,
        images_root=Path(images_dir),
        aligned=aligned,
        photos_dir=None if photos_dir is None else Path(photos_dir),
        augmentations=parse_augmentations(augment),
        batch_size=batch_size,
        threads=threads,
        chunk_size=chunk_size,
        eval_fraction=eval_fraction,
        new_flip=new_flip,
    )
    options.check(out=out, overwrite=overwrite)
    chunk_dir = chunk_dir_for(out)
    records = list_image_folder(options.images_root, limit=limit)
    run = _open_run(
        options, records=records, chunk_dir=chunk_dir, detector_upsample=detector_upsample
    )
    check_or_write_state(chunk_dir, run_state(records, run.settings()))
    n_chunks = (len(records) + chunk_size - 1) // chunk_size
    todo = [k for k in range(n_chunks) if not chunk_path(chunk_dir, k).exists()]
    done_before = n_chunks - len(todo)
    done_images = len(records) - sum(len(run.chunk_records(k)) for k in todo)
    written, stopped = _write_chunks(
        run, todo, progress=progress, initial=done_images, stop_after=stop_after_chunks
    )
    if stopped:
        return ExtractionResult(
            output=out,
            rows=0,
            images=written * chunk_size,
            chunks_done_before=done_before,
            seconds=time.perf_counter() - started,
        )
    rows, skipped = _finish(out, chunk_dir, n_chunks=n_chunks, keep_chunks=keep_chunks)
    return ExtractionResult(
        output=out,
        rows=rows,
        images=len(records),
        skipped=skipped,
        chunks_done_before=done_before,
        seconds=time.perf_counter() - started,
    )
