"""From a decoded image to aligned 112 x 112 face crops: checked pass-through, or detect + align.

A 112 x 112 image is taken as an aligned crop: it skips detection, and the face check
(:mod:`service.inference.facecheck`) decides whether it is a face at all."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.errors import ImageError, NoFaceFound
from service.inference.align import ARCFACE_SIZE, align_face
from service.inference.detect import DetectedFace, FaceDetector
from service.inference.facecheck import CropFaceCheck, require_face

NO_DETECTOR_MESSAGE = "no detector installed: send aligned 112x112 crops"


@dataclass(frozen=True, eq=False)
class FaceCrop:
    """An aligned crop and the detection it came from (None for a crop passed straight through)."""

    crop: np.ndarray
    face: DetectedFace | None


def _size(image: np.ndarray | Image.Image) -> tuple[int, int]:
    """(width, height) of an array or a Pillow image."""
    if isinstance(image, Image.Image):
        return image.size
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"expected an H x W x 3 image, got shape {image.shape}")
    return int(image.shape[1]), int(image.shape[0])


def is_aligned_crop(image: np.ndarray | Image.Image, *, size: int = ARCFACE_SIZE) -> bool:
    """A size x size image is taken as already aligned (the kit's ``aligned/`` crops)."""
    return _size(image) == (size, size)


def detection_copy(
    image: np.ndarray | Image.Image, *, max_side: int | None
) -> tuple[np.ndarray, tuple[float, float]]:
    """The array the detector runs on: ``image`` itself, or a copy whose longest side is at most
    ``max_side`` (Pillow's ``reduce``: a box filter by a whole factor, cheap in time and memory);
    with the (x, y) factors that take its coordinates back to ``image``'s."""
    width, height = _size(image)
    factor = 1 if max_side is None else -(-max(width, height) // int(max_side))
    if factor <= 1:
        array = image if isinstance(image, np.ndarray) else np.asarray(image, dtype=np.uint8)
        return np.ascontiguousarray(array, dtype=np.uint8), (1.0, 1.0)
    source = image if isinstance(image, Image.Image) else Image.fromarray(image)
    small = source.reduce(factor)
    scale = (width / small.size[0], height / small.size[1])
    return np.ascontiguousarray(np.asarray(small, dtype=np.uint8)), scale


def _scaled(face: DetectedFace, scale: tuple[float, float]) -> DetectedFace:
    """A detection on the reduced copy, in the original image's pixels (the detector's own
    object no longer fits, so it is dropped)."""
    sx, sy = scale
    x0, y0, x1, y1 = face.box
    return DetectedFace(
        box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy),
        landmarks5=(face.landmarks5 * np.array([sx, sy], dtype=np.float32)).astype(np.float32),
        score=face.score,
    )


def face_crops(
    image: np.ndarray | Image.Image,
    *,
    detector: FaceDetector | None,
    all_faces: bool = False,
    face_check: CropFaceCheck | None = None,
    detect_max_side: int | None = None,
) -> list[FaceCrop]:
    """Aligned crops with their detections; largest / most central face first.

    A 112 x 112 image passes straight through when ``face_check`` accepts it (always without a
    check). Raises :class:`NoFaceFound` when the check refuses the crop or the detector finds
    nothing, and :class:`ImageError` when a photo arrives but no detector is installed. With
    ``detect_max_side`` the detector sees a reduced copy of a larger photo (its time and memory
    grow with the pixels) and the face is aligned from the full-size ``image``.
    """
    width, height = _size(image)
    if is_aligned_crop(image):
        crop = np.ascontiguousarray(np.asarray(image), dtype=np.uint8)
        require_face(face_check, crop)
        return [FaceCrop(crop=crop, face=None)]
    if detector is None:
        raise ImageError(f"{NO_DETECTOR_MESSAGE} (got a {width}x{height} image)")
    small, scale = detection_copy(image, max_side=detect_max_side)
    faces = detector.detect(small)
    if not faces:
        raise NoFaceFound(f"no face found by the {detector.name} detector")
    if scale != (1.0, 1.0):
        faces = [_scaled(face, scale) for face in faces]
    chosen = faces if all_faces else faces[:1]
    return [FaceCrop(crop=align_face(image, face.landmarks5), face=face) for face in chosen]


def aligned_faces(
    image: np.ndarray | Image.Image,
    *,
    detector: FaceDetector | None,
    all_faces: bool = False,
    face_check: CropFaceCheck | None = None,
    detect_max_side: int | None = None,
) -> list[np.ndarray]:
    """112 x 112 x 3 uint8 RGB crops, largest / most central first; one unless ``all_faces``."""
    found = face_crops(
        image,
        detector=detector,
        all_faces=all_faces,
        face_check=face_check,
        detect_max_side=detect_max_side,
    )
    return [fc.crop for fc in found]
