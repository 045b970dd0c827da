"""What extraction reads and how: the image folder's records, the split and augmentations,
each side (an ONNX backbone or dlib) and the :class:`Preparer` that decodes, detects, aligns
and augments an image into samples. Torch-free."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.contracts import SPLIT_BRIDGE, SPLIT_EVAL
from service.errors import ImageError, InvalidInput
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
