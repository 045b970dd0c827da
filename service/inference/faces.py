"""From a decoded image to aligned 112 x 112 face crops: checked pass-through, or detect + align.

A 112 x 112 image is taken as an aligned crop: it skips detection, and the face check
(:mod:`service.inference.facecheck`) decides whether it is a face at all."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def is_aligned_crop(image: np.ndarray, *, size: int = ARCFACE_SIZE) -> bool:
    """A size x size image is taken as already aligned (the kit's ``aligned/`` crops)."""
    return image.ndim == 3 and image.shape[0] == size and image.shape[1] == size


def face_crops(
    image: np.ndarray,
    *,
    detector: FaceDetector | None,
    all_faces: bool = False,
    face_check: CropFaceCheck | None = None,
) -> list[FaceCrop]:
    """Aligned crops with their detections; largest / most central face first.

    A 112 x 112 image passes straight through when ``face_check`` accepts it (always without a
    check). Raises :class:`NoFaceFound` when the check refuses the crop or the detector finds
    nothing, and :class:`ImageError` when a photo arrives but no detector is installed.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"expected an H x W x 3 image, got shape {image.shape}")
    if is_aligned_crop(image):
        crop = np.ascontiguousarray(image, dtype=np.uint8)
        require_face(face_check, crop)
        return [FaceCrop(crop=crop, face=None)]
    if detector is None:
        height, width = image.shape[:2]
        raise ImageError(f"{NO_DETECTOR_MESSAGE} (got a {width}x{height} image)")
    faces = detector.detect(image)
    if not faces:
        raise NoFaceFound(f"no face found by the {detector.name} detector")
    chosen = faces if all_faces else faces[:1]
    return [FaceCrop(crop=align_face(image, face.landmarks5), face=face) for face in chosen]


def aligned_faces(
    image: np.ndarray,
    *,
    detector: FaceDetector | None,
    all_faces: bool = False,
    face_check: CropFaceCheck | None = None,
) -> list[np.ndarray]:
    """112 x 112 x 3 uint8 RGB crops, largest / most central first; one unless ``all_faces``."""
    found = face_crops(image, detector=detector, all_faces=all_faces, face_check=face_check)
    return [fc.crop for fc in found]
