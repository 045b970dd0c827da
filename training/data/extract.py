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

import hashlib
import json
import shutil
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.contracts import PAIRS_NEW_FLIP, SPLIT_BRIDGE, SPLIT_EVAL, PairsSet, save_pairs
from service.errors import ContractError, FacebridgeError, ImageError, InvalidInput
from service.files import atomic_path, write_text_atomically
from service.inference.align import ARCFACE_SIZE, alignment_matrix, warp_affine
from service.inference.backbone import OnnxBackbone
from service.inference.detect import DetectedFace, DlibDetector
from service.inference.faces import is_aligned_crop
from service.inference.images import read_image_file
from training.data.flip import embed_with_mirror

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
AUGMENTATIONS = ("flip", "shift")
AUGMENT_NONE = "none"
DLIB_SPEC = "dlib"
STATE_FILE = "extract.json"
STATE_VERSION = 1
# Shift augmentation: the face moves by up to this fraction of the crop size (3.4 px at 112).
SHIFT_FRACTION = 0.03


@dataclass(frozen=True)
class ImageRecord:
    identity: str
    label: int
    relpath: str


def list_image_folder(root: str | Path, *, limit: int | None = None) -> list[ImageRecord]:
    """``root/<identity>/<image>`` sorted by identity then file name; label = identity index.

    ``limit`` keeps the first N images (and stops listing folders once it has them).
    """
    base = Path(root)
    if not base.is_dir():
        raise InvalidInput(f"image folder not found: {base}")
    identities = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    records: list[ImageRecord] = []
    label = 0
    for identity in identities:
        if limit is not None and len(records) >= limit:
            break
        files = sorted(
            f.name
            for f in (base / identity).iterdir()
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            continue
        records += [ImageRecord(identity, label, f"{identity}/{name}") for name in files]
        label += 1
    if not records:
        raise InvalidInput(
            f"{base}: no images found under <identity>/<image> ({', '.join(IMAGE_SUFFIXES)})"
        )
    return records if limit is None else records[: max(0, int(limit))]


def parse_augmentations(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"flip,shift"`` -> ("flip", "shift"); unknown names are an error."""
    if spec is None:
        return ()
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n and n != AUGMENT_NONE]
    unknown = sorted(set(names) - set(AUGMENTATIONS))
    if unknown:
        raise InvalidInput(
            f"unknown augmentation(s) {unknown}; choose from {', '.join(AUGMENTATIONS)}"
        )
    return tuple(dict.fromkeys(names))


def split_for_identity(identity: str, *, eval_fraction: float) -> str:
    """ "eval" for a stable pseudo-random ``eval_fraction`` of identities, else "bridge".

    Decided by a hash of the identity's name, so a person is never on both sides (PROTOCOL.md)
    and adding images or identities later does not move anyone.
    """
    bucket = zlib.crc32(identity.encode()) / 2**32
    return SPLIT_EVAL if bucket < eval_fraction else SPLIT_BRIDGE


# ---------------------------------------------------------------------------------------------
# Samples and sides
# ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Sample:
    """One row to embed: the crop (ONNX sides) and/or the photo + face (dlib side).

    Photo sides are embedded as soon as a sample is prepared (``vectors``), and the photo is then
    dropped: a chunk never holds hundreds of full-size photos in memory.
    """

    record: ImageRecord
    augment: str
    crop: np.ndarray | None = None
    photo: np.ndarray | None = None
    face: DetectedFace | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


class Side(Protocol):
    model_id: str
    output_dim: int
    needs_photo: bool

    def embed_samples(self, samples: Sequence[Sample]) -> np.ndarray: ...


class OnnxSide:
    needs_photo = False

    def __init__(self, backbone: OnnxBackbone) -> None:
        self.backbone = backbone
        self.model_id = backbone.model_id
        self.output_dim = backbone.output_dim

    def embed_samples(self, samples: Sequence[Sample]) -> np.ndarray:
        if not samples:
            return np.empty((0, self.output_dim), np.float32)
        return self.backbone.embed(np.stack([s.crop for s in samples]))

    def embed_samples_with_mirror(self, samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
        """(e(crop), e(mirror(crop))): one backbone call for both (``new_flip``)."""
        return embed_with_mirror(self.backbone, np.stack([s.crop for s in samples]))


class DlibSide:
    needs_photo = True

    def __init__(self, descriptor: Any) -> None:
        self.descriptor = descriptor
        self.model_id = descriptor.model_id
        self.output_dim = descriptor.output_dim

    def embed_samples(self, samples: Sequence[Sample]) -> np.ndarray:
        return self.descriptor.embed_photos([s.photo for s in samples], [s.face for s in samples])


def open_side(
    spec: str, *, threads: int, batch_size: int, detector: DlibDetector | None
) -> OnnxSide | DlibSide:
    """``"dlib"`` or a backbone manifest path -> a side ready to embed."""
    if spec == DLIB_SPEC:
        from service.inference.dlib_backbone import DlibDescriptor

        return DlibSide(DlibDescriptor(detector=detector))
    path = Path(spec)
    if path.suffix.lower() == ".onnx":
        raise InvalidInput(
            f"{spec}: pass the backbone's manifest (.json beside the .onnx), not the .onnx"
        )
    return OnnxSide(OnnxBackbone(path, intra_op_threads=threads, batch_size=batch_size))


# ---------------------------------------------------------------------------------------------
# Preparing samples (decode, detect, align, augment)
# ---------------------------------------------------------------------------------------------
def _shift_offset(relpath: str) -> np.ndarray:
    """A deterministic per-image shift (crop pixels), so a resumed run gives identical rows."""
    rng = np.random.default_rng(zlib.crc32(relpath.encode()))
    angle = rng.uniform(0.0, 2.0 * np.pi)
    radius = SHIFT_FRACTION * ARCFACE_SIZE * rng.uniform(0.5, 1.0)
    return np.array([np.cos(angle), np.sin(angle)]) * radius


def _translate(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """The image content moved by (dx, dy) pixels (black border), same size."""
    height, width = image.shape[:2]
    return warp_affine(image, np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]), size=(width, height))


@dataclass
class Preparer:
    """Turns an image record into samples (original + augmentations). Thread-safe."""

    images_dir: Path
    aligned: bool
    need_crop: bool
    need_photo: bool
    photos_dir: Path | None = None
    detector: DlibDetector | None = None
    augment: tuple[str, ...] = ()
    eval_fraction: float = 0.0
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000

    def _read(self, path: Path) -> np.ndarray:
        return read_image_file(path, max_bytes=self.max_bytes, max_pixels=self.max_pixels)

    def _detect(self, photo: np.ndarray, what: str = "photo") -> DetectedFace:
        assert self.detector is not None
        faces = self.detector.detect(photo)
        if not faces:
            raise ImageError(f"no face found in the {what}")
        return faces[0]

    def prepare(self, record: ImageRecord) -> list[Sample]:
        """Samples for ``record``; raises ImageError when the image is unusable."""
        crop = photo = face = None
        if self.aligned:
            if self.need_crop:
                crop = self._read(self.images_dir / record.relpath)
                if not is_aligned_crop(crop):
                    raise ImageError(
                        f"{record.relpath}: --aligned expects 112x112 crops, got "
                        f"{crop.shape[1]}x{crop.shape[0]}"
                    )
            if self.need_photo:
                assert self.photos_dir is not None
                photo = self._read(self.photos_dir / record.relpath)
                face = self._detect(photo)
        else:
            photo = self._read(self.images_dir / record.relpath)
            face = self._detect(photo)
            if self.need_crop:
                crop = warp_affine(photo, alignment_matrix(face.landmarks5), size=(112, 112))
        samples = [Sample(record, AUGMENT_NONE, crop, photo if self.need_photo else None, face)]
        if split_for_identity(record.identity, eval_fraction=self.eval_fraction) == SPLIT_EVAL:
            return samples  # eval rows stay one per image: the protocol's probes and gallery
        for name in self.augment:
            try:
                samples.append(self._augmented(name, record, crop, photo, face))
            except ImageError:
                continue  # e.g. no face in the mirrored photo: the augmented row is just absent
        return samples

    def _augmented(
        self,
        name: str,
        record: ImageRecord,
        crop: np.ndarray | None,
        photo: np.ndarray | None,
        face: DetectedFace | None,
    ) -> Sample:
        if name == "flip":
            new_crop = None if crop is None else np.ascontiguousarray(crop[:, ::-1])
            new_photo = new_face = None
            if photo is not None:
                new_photo = np.ascontiguousarray(photo[:, ::-1])
                # The mirrored box, not a fresh detection: HOG may box a mirrored face
                # differently, and the pair should differ only by the flip.
                assert self.detector is not None and face is not None
                width = photo.shape[1]
                x0, y0, x1, y1 = face.box
                new_face = self.detector.face_from_box(
                    new_photo, (width - 1 - x1, y0, width - 1 - x0, y1), score=face.score
                )
                if crop is not None and not self.aligned:
                    new_crop = warp_affine(
                        new_photo, alignment_matrix(new_face.landmarks5), size=(112, 112)
                    )
            return Sample(record, name, new_crop, new_photo if self.need_photo else None, new_face)
        # "shift": move the face inside the crop (and inside dlib's own chip) by the same amount.
        offset_crop = _shift_offset(record.relpath)
        new_crop, new_face = crop, face
        if face is not None and photo is not None:
            assert self.detector is not None
            matrix = alignment_matrix(face.landmarks5)
            scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
            dx, dy = (int(v) for v in np.round(offset_crop / scale))
            if dx == 0 and dy == 0:
                dx = 1
            new_face = self.detector.shifted(face, dx=dx, dy=dy)
            offset_crop = matrix[:, :2] @ np.array([dx, dy], dtype=np.float64)
            if not self.aligned and crop is not None:
                new_crop = warp_affine(
                    photo, alignment_matrix(new_face.landmarks5), size=(112, 112)
                )
        if self.aligned and crop is not None:
            # Landmarks moved by +d in the photo == crop content moved by -d * scale.
            new_crop = _translate(crop, -offset_crop[0], -offset_crop[1])
        return Sample(record, name, new_crop, photo if self.need_photo else None, new_face)


# ---------------------------------------------------------------------------------------------
# Chunked, resumable extraction
# ---------------------------------------------------------------------------------------------
@dataclass
class ExtractionResult:
    output: Path
    rows: int
    images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    chunks_done_before: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def chunk_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".chunks")


def _chunk_path(chunk_dir: Path, index: int) -> Path:
    return chunk_dir / f"chunk_{index:06d}.npz"


def _state(records: Sequence[ImageRecord], settings: dict[str, Any]) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(r.relpath for r in records).encode()).hexdigest()
    return {"version": STATE_VERSION, "images": len(records), "list_sha256": digest, **settings}


def _check_or_write_state(chunk_dir: Path, state: dict[str, Any]) -> None:
    path = chunk_dir / STATE_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != state:
            diff = sorted(k for k in set(previous) | set(state) if previous.get(k) != state.get(k))
            if diff == [PAIRS_NEW_FLIP]:  # one line that says exactly what to do
                how = (
                    "started with new_flip: finish it with --new-flip"
                    if previous.get(PAIRS_NEW_FLIP)
                    else "started without new_flip (chunks never mix): finish it with "
                    "--no-new-flip, then add new_flip with `facebridge pairs add-flip`"
                )
                raise ContractError(
                    f"{chunk_dir} holds an interrupted run {how}; or delete that folder to "
                    "start over"
                )
            raise ContractError(
                f"{chunk_dir} holds an interrupted run with different settings "
                f"({', '.join(diff)}); rerun with the same options, or delete that folder "
                "to start over"
            )
        return
    write_text_atomically(path, json.dumps(state, indent=2, sort_keys=True))


def _write_chunk(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:  # a chunk file exists only when complete
        np.savez(tmp, **arrays)


def _prepare_chunk(
    preparer: Preparer,
    records: Sequence[ImageRecord],
    pool: ThreadPoolExecutor | None,
    photo_sides: dict[str, Side],
) -> tuple[list[Sample], list[tuple[str, str]]]:
    def one(record: ImageRecord) -> list[Sample] | FacebridgeError:
        try:
            samples = preparer.prepare(record)
        except FacebridgeError as exc:  # ImageError / PayloadTooLarge: skip this image
            return exc
        for sample in samples:
            for role, side in photo_sides.items():
                sample.vectors[role] = side.embed_samples([sample])[0]
            sample.photo = None
        return samples

    results = list(pool.map(one, records)) if pool is not None else [one(r) for r in records]
    samples: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    for record, result in zip(records, results, strict=True):
        if isinstance(result, FacebridgeError):
            skipped.append((record.relpath, str(result)))
        else:
            samples += result
    return samples, skipped


def _embed_chunk(
    samples: Sequence[Sample],
    *,
    old: Side,
    new: Side,
    batch_size: int,
    with_faces: bool,
    eval_fraction: float,
    new_flip: bool = False,
) -> dict[str, np.ndarray]:

    def embed(side: Side, role: str) -> np.ndarray:
        if not samples:
            return np.empty((0, side.output_dim), np.float32)
        if side.needs_photo:  # already embedded while preparing
            return np.stack([s.vectors[role] for s in samples]).astype(np.float32)
        parts = [
            side.embed_samples(samples[start : start + batch_size])
            for start in range(0, len(samples), batch_size)
        ]
        return np.concatenate(parts)

    def embed_with_flip(side: OnnxSide) -> tuple[np.ndarray, np.ndarray]:
        """Each batch's crops and their mirrors in one backbone call."""
        if not samples:
            empty = np.empty((0, side.output_dim), np.float32)
            return empty, empty.copy()
        parts = [
            side.embed_samples_with_mirror(samples[start : start + batch_size])
            for start in range(0, len(samples), batch_size)
        ]
        return np.concatenate([p for p, _ in parts]), np.concatenate([f for _, f in parts])

    flip_arrays: dict[str, np.ndarray] = {}
    if new_flip:
        assert isinstance(new, OnnxSide)  # checked in extract_pairs
        new_vectors, flip_arrays[PAIRS_NEW_FLIP] = embed_with_flip(new)
    else:
        new_vectors = embed(new, "new")
    arrays: dict[str, np.ndarray] = {
        "old": embed(old, "old"),
        "new": new_vectors,
        **flip_arrays,
        "label": np.array([s.record.label for s in samples], dtype=np.int64),
        "name": np.array([s.record.identity for s in samples], dtype=str),
        "path": np.array([s.record.relpath for s in samples], dtype=str),
        "augment": np.array([s.augment for s in samples], dtype=str),
    }
    if eval_fraction > 0:
        arrays["split"] = np.array(
            [split_for_identity(s.record.identity, eval_fraction=eval_fraction) for s in samples],
            dtype=str,
        )
    if with_faces:
        arrays["landmarks5"] = np.array(
            [s.face.landmarks5 if s.face is not None else np.full((5, 2), np.nan) for s in samples],
            dtype=np.float32,
        ).reshape(len(samples), 5, 2)
    return arrays


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
    started = time.perf_counter()
    images_root, out = Path(images_dir), Path(output)
    augmentations = parse_augmentations(augment)
    if batch_size < 1 or chunk_size < 1 or threads < 1:
        raise InvalidInput("batch-size, chunk-size and threads must be >= 1")
    if not 0.0 <= eval_fraction < 1.0:
        raise InvalidInput(f"eval fraction must be in [0, 1), got {eval_fraction}")
    chunk_dir = chunk_dir_for(out)
    if out.exists() and not chunk_dir.exists() and not overwrite:
        raise InvalidInput(f"{out} already exists; pass --overwrite to replace it")
    wants_dlib = DLIB_SPEC in (old, new)
    if aligned and wants_dlib and photos_dir is None:
        raise InvalidInput(
            "dlib embeds photos with its own alignment, not 112x112 crops: with --aligned pass "
            "--photos DIR (the photos under the same relative paths, e.g. the kit's photos/)"
        )
    if new_flip and new == DLIB_SPEC:
        raise InvalidInput(
            "new_flip embeds the mirrored 112x112 crop with the new ONNX backbone; the new side "
            "is dlib: pass --no-new-flip"
        )
    records = list_image_folder(images_root, limit=limit)
    detector: DlibDetector | None = None
    if not aligned or wants_dlib:
        try:
            detector = DlibDetector(upsample=detector_upsample)
        except ContractError as exc:
            raise InvalidInput(
                f"photos need a face detector ({exc}); or pass --aligned with 112x112 crops"
            ) from exc
    old_side = open_side(old, threads=threads, batch_size=batch_size, detector=detector)
    new_side = open_side(new, threads=threads, batch_size=batch_size, detector=detector)
    preparer = Preparer(
        images_dir=images_root,
        aligned=aligned,
        need_crop=not (old_side.needs_photo and new_side.needs_photo),
        need_photo=old_side.needs_photo or new_side.needs_photo,
        photos_dir=None if photos_dir is None else Path(photos_dir),
        detector=detector,
        augment=augmentations,
        eval_fraction=eval_fraction,
    )
    photo_sides: dict[str, Side] = {
        role: side for role, side in (("old", old_side), ("new", new_side)) if side.needs_photo
    }
    settings = {
        "images_dir": str(images_root.resolve()),
        "photos_dir": None if photos_dir is None else str(Path(photos_dir).resolve()),
        "old": old_side.model_id,
        "new": new_side.model_id,
        "aligned": aligned,
        "augment": list(augmentations),
        "chunk_size": chunk_size,
        "shift_fraction": SHIFT_FRACTION,
        "eval_fraction": eval_fraction,
    }
    if new_flip:  # absent when off, so a run started before new_flip existed still resumes
        settings[PAIRS_NEW_FLIP] = True
    state = _state(records, settings)
    _check_or_write_state(chunk_dir, state)
    n_chunks = (len(records) + chunk_size - 1) // chunk_size
    todo = [k for k in range(n_chunks) if not _chunk_path(chunk_dir, k).exists()]
    done_before = n_chunks - len(todo)
    done_images = len(records) - sum(
        len(records[k * chunk_size : (k + 1) * chunk_size]) for k in todo
    )
    with_faces = detector is not None
    bar = _progress_bar(total=len(records), initial=done_images, enabled=progress)
    skipped_file = chunk_dir / "skipped.jsonl"
    # One thread prepares (decodes/detects) the next chunk while this one is embedded; with more
    # threads, decoding itself is parallel too (Pillow releases the GIL while decoding).
    prep_pool = ThreadPoolExecutor(max_workers=max(1, threads - 1)) if threads > 2 else None
    ahead = ThreadPoolExecutor(max_workers=1)
    written = 0
    try:

        def chunk_records(k: int) -> list[ImageRecord]:
            return records[k * chunk_size : (k + 1) * chunk_size]

        def submit(k: int) -> Future[tuple[list[Sample], list[tuple[str, str]]]]:
            return ahead.submit(_prepare_chunk, preparer, chunk_records(k), prep_pool, photo_sides)

        pending = submit(todo[0]) if todo else None
        for position, k in enumerate(todo):
            assert pending is not None
            samples, skipped = pending.result()
            stop_here = stop_after_chunks is not None and written + 1 >= stop_after_chunks
            last = position + 1 >= len(todo) or stop_here
            pending = None if last else submit(todo[position + 1])
            arrays = _embed_chunk(
                samples,
                old=old_side,
                new=new_side,
                batch_size=batch_size,
                with_faces=with_faces,
                eval_fraction=eval_fraction,
                new_flip=new_flip,
            )
            if skipped:
                with skipped_file.open("a") as fh:
                    for relpath, reason in skipped:
                        fh.write(json.dumps({"chunk": k, "path": relpath, "reason": reason}) + "\n")
            _write_chunk(_chunk_path(chunk_dir, k), arrays)
            written += 1
            bar.update(len(chunk_records(k)))
            if stop_here:
                return ExtractionResult(
                    output=out,
                    rows=0,
                    images=written * chunk_size,
                    chunks_done_before=done_before,
                    seconds=time.perf_counter() - started,
                )
    finally:
        bar.close()
        ahead.shutdown(wait=True, cancel_futures=True)
        if prep_pool is not None:
            prep_pool.shutdown(wait=True)
    pairs = _join_chunks(chunk_dir, n_chunks)
    if out.exists() and out.is_dir():
        shutil.rmtree(out)
    save_pairs(out, pairs)
    skipped_all = _read_skipped(skipped_file)
    if not keep_chunks:
        shutil.rmtree(chunk_dir)
    return ExtractionResult(
        output=out,
        rows=len(pairs),
        images=len(records),
        skipped=skipped_all,
        chunks_done_before=done_before,
        seconds=time.perf_counter() - started,
    )


def _join_chunks(chunk_dir: Path, n_chunks: int) -> PairsSet:
    parts: dict[str, list[np.ndarray]] = {}
    keys: set[str] | None = None
    for k in range(n_chunks):
        path = _chunk_path(chunk_dir, k)
        with np.load(path, allow_pickle=False) as z:
            if keys is not None and set(z.files) != keys:
                odd = sorted(keys ^ set(z.files))
                raise ContractError(
                    f"{path} differs from the earlier chunks in {', '.join(odd)}: chunks of "
                    f"different runs are never mixed; delete {chunk_dir} and extract again"
                )
            keys = set(z.files)
            for key in z.files:
                parts.setdefault(key, []).append(z[key])
    arrays = {key: np.concatenate(values) for key, values in parts.items()}
    if arrays["label"].shape[0] == 0:
        raise ImageError(
            f"no usable image: every image was skipped (see {chunk_dir / 'skipped.jsonl'})"
        )
    named = ("old", "new", "label", "name", "path", "split", PAIRS_NEW_FLIP)
    return PairsSet(
        old=arrays["old"],
        new=arrays["new"],
        label=arrays["label"],
        name=arrays["name"],
        path=arrays["path"],
        split=arrays.get("split"),
        extra={k: v for k, v in arrays.items() if k not in named},
        new_flip=arrays.get(PAIRS_NEW_FLIP),
    )


def _read_skipped(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["path"], r["reason"]) for r in rows]


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(*, total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="extracting", dynamic_ncols=True)
