"""``new_flip``: the new model's embedding of each row's image mirrored left-right.

The pairs contract's optional ``new_flip`` [N, d_new] (service.contracts.PairsSet) is
``e(mirror(crop))``: the row's aligned 112 x 112 crop mirrored
(:func:`service.inference.backbone.mirror_crops`, the service's own mirror) and embedded by the new
backbone, normalised there like ``new`` (its one place). It is the raw unit embedding of the
mirrored crop, NOT the average: a flip-averaged query is
``service.vectors.flip_average(new, new_flip)``, as the service computes for ``/identify``.

- :func:`embed_with_mirror`: originals and mirrors of a batch in ONE backbone call (what
  ``facebridge pairs extract`` does by default).
- :func:`mirrored_embeddings` / :func:`add_flip`: ``facebridge pairs add-flip``, for an existing
  pairs file: re-reads every (selected) row's image ``DIR/<path>`` through the service's image
  pipeline (a 112 x 112 crop passes through; a photo is aligned with the row's own
  ``landmarks5`` when the file has them, else detected + aligned as extraction does).

Torch-free.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from service.contracts import PairsSet, load_pairs, save_pairs
from service.errors import FacebridgeError, ImageError, InvalidInput
from service.inference.align import align_face
from service.inference.backbone import OnnxBackbone, mirror_crops
from service.inference.faces import aligned_faces, is_aligned_crop
from service.inference.images import read_image_file

AUGMENT_COLUMN = "augment"
LANDMARKS_COLUMN = "landmarks5"


def embed_with_mirror(backbone: OnnxBackbone, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(e(crop), e(mirror(crop))) for [N, H, W, 3] crops, both unit vectors, from ONE
    ``backbone.embed`` call on the originals followed by their mirrors."""
    crops = np.asarray(crops)
    n = crops.shape[0]
    if n == 0:
        empty = np.empty((0, backbone.output_dim), np.float32)
        return empty, empty.copy()
    both = backbone.embed(np.concatenate([crops, mirror_crops(crops)]))
    return both[:n], both[n:]


@dataclass
class CropReader:
    """The aligned crop of a pairs row from ``images_dir/<path>`` (the service's pipeline).

    A 112 x 112 image passes through. A photo is aligned with ``landmarks5`` when given (the row's
    own, written by extraction: exactly the crop it embedded), else the largest face found by the
    dlib detector (``detector_upsample`` as ``pairs extract --upsample``).
    """

    images_dir: Path
    detector_upsample: int = 0
    _detector: Any = field(default=None, init=False, repr=False)  # made on the first photo

    def _detector_or_fail(self, path: Path) -> Any:
        if self._detector is None:
            from service.inference.detect import DlibDetector

            try:
                self._detector = DlibDetector(upsample=self.detector_upsample)
            except FacebridgeError as exc:
                raise InvalidInput(
                    f"{path} is a photo, not a 112x112 crop, and needs a face detector ({exc})"
                ) from exc
        return self._detector

    def crop(self, relpath: str, *, landmarks5: np.ndarray | None = None) -> np.ndarray:
        path = self.images_dir / relpath
        image = read_image_file(path)
        if is_aligned_crop(image):
            return image
        if landmarks5 is not None and np.isfinite(landmarks5).all():
            return align_face(image, landmarks5)
        detector = self._detector_or_fail(path)
        try:
            return aligned_faces(image, detector=detector)[0]
        except FacebridgeError as exc:  # e.g. no face: every row needs its crop
            raise ImageError(f"{path}: {exc}") from exc


def _check_rows(pairs: PairsSet, images_dir: Path) -> list[str]:
    """The rows' relative paths; one clear error for what add-flip cannot reproduce."""
    if pairs.path is None:
        raise InvalidInput("the pairs file has no 'path' column: add-flip cannot find the images")
    augment = pairs.extra.get(AUGMENT_COLUMN)
    if augment is not None:
        changed = np.flatnonzero(np.asarray(augment).astype(str) != "none")
        if changed.size:
            raise InvalidInput(
                f"{changed.size} row(s) are augmented (augment={str(augment[changed[0]])!r}, "
                f"e.g. row {int(changed[0])}): their crop is not DIR/<path> as stored; "
                "re-extract with `facebridge pairs extract` (it writes new_flip by default)"
            )
    paths = [str(p) for p in pairs.path]
    for relpath in paths:  # fail before minutes of work, naming the file
        if not (images_dir / relpath).is_file():
            raise InvalidInput(f"image not found: {images_dir / relpath} (a row's path)")
    return paths


def mirrored_embeddings(
    *,
    pairs: PairsSet,
    images_dir: str | Path,
    backbone: OnnxBackbone,
    batch_size: int = 64,
    progress: bool = True,
    with_plain: bool = False,
    detector_upsample: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(new_flip, plain) for every row of ``pairs``: ``e(mirror(crop))`` and, with
    ``with_plain``, ``e(crop)`` from the same call (to check it reproduces ``new``; twice the
    work). Decoding the next batch overlaps the current batch's embedding."""
    from tqdm import tqdm

    images_root = Path(images_dir)
    if batch_size < 1:
        raise InvalidInput("batch size must be >= 1")
    paths = _check_rows(pairs, images_root)
    landmarks = pairs.extra.get(LANDMARKS_COLUMN)
    reader = CropReader(images_dir=images_root, detector_upsample=detector_upsample)

    def read(rows: range) -> np.ndarray:
        return np.stack(
            [
                reader.crop(paths[i], landmarks5=None if landmarks is None else landmarks[i])
                for i in rows
            ]
        )

    batches = [range(s, min(s + batch_size, len(paths))) for s in range(0, len(paths), batch_size)]
    flipped, plain = [], []
    bar = tqdm(
        total=len(paths),
        unit="img",
        desc="mirrored crops",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for crops, rows in zip(_prefetched(read, batches), batches, strict=True):
            if with_plain:
                p, f = embed_with_mirror(backbone, crops)
                plain.append(p)
            else:
                f = backbone.embed(mirror_crops(crops))
            flipped.append(f)
            bar.update(len(rows))
    finally:
        bar.close()
    dim = backbone.output_dim
    new_flip = np.concatenate(flipped) if flipped else np.empty((0, dim), np.float32)
    return new_flip, (np.concatenate(plain) if with_plain else None)


def _prefetched(
    read: Callable[[range], np.ndarray], batches: Sequence[range]
) -> Iterator[np.ndarray]:
    """``read(batch)`` for each batch, the next one decoded in a thread meanwhile."""
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, batches[0])
        for k in range(len(batches)):
            crops = pending.result()
            if k + 1 < len(batches):
                pending = pool.submit(read, batches[k + 1])
            yield crops


@dataclass
class AddFlipResult:
    output: Path
    rows: int
    replaced: bool  # the input already carried new_flip (recomputed)
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


def add_flip(
    *,
    pairs_path: str | Path,
    images_dir: str | Path,
    backbone_manifest: str | Path,
    output: str | Path,
    split: str | None = None,
    batch_size: int = 64,
    threads: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> AddFlipResult:
    """``facebridge pairs add-flip``: OUTPUT = the (``split``-selected) rows of PAIRS + new_flip.

    Never writes to the input. The backbone must be the one that made ``new`` (its output
    dimension is checked; re-embedding the unmirrored crops reproduces ``new``, which
    tests/pipeline/test_extract.py checks on the kit).
    """
    started = time.perf_counter()
    source, out = Path(pairs_path), Path(output)
    if threads < 1:
        raise InvalidInput("threads must be >= 1")
    if out.resolve() == source.resolve():
        raise InvalidInput(f"--output must differ from --pairs ({source} is never written to)")
    if out.exists() and not overwrite:
        raise InvalidInput(f"{out} already exists; pass --overwrite to replace it")
    pairs = load_pairs(source).select_split(split)
    backbone_path = Path(backbone_manifest)
    if backbone_path.suffix.lower() == ".onnx":
        raise InvalidInput(
            f"{backbone_path}: pass the backbone's manifest (.json beside the .onnx), not the .onnx"
        )
    backbone = OnnxBackbone(backbone_path, intra_op_threads=threads, batch_size=batch_size)
    if backbone.output_dim != pairs.new_dim:
        raise InvalidInput(
            f"backbone {backbone.model_id} gives {backbone.output_dim}-d vectors but the pairs' "
            f"new vectors are {pairs.new_dim}-d: pass the new model's manifest"
        )
    new_flip, _ = mirrored_embeddings(
        pairs=pairs,
        images_dir=images_dir,
        backbone=backbone,
        batch_size=batch_size,
        progress=progress,
    )
    result = replace(pairs, new_flip=new_flip)
    if out.exists() and out.is_dir():
        shutil.rmtree(out)
    save_pairs(out, result)
    return AddFlipResult(
        output=out,
        rows=len(result),
        replaced=pairs.new_flip is not None,
        seconds=time.perf_counter() - started,
    )
