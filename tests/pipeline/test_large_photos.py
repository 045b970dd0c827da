"""Issue 11 (hardening): a large photo is detected on a bounded reduced copy and aligned from
the full-size original; the request's decoded pixels are capped; without a detector a photo is
refused from its header, never decoded."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.errors import ImageError
from service.inference.detect import DetectedFace, FaceDetector, dlib_available
from service.inference.faces import face_crops
from service.inference.images import decode_image
from service.pipeline import ImageUpload, Pipeline

KIT_PHOTO = "Aaron_Guiel/Aaron_Guiel_0001.jpg"


class ShapeRecorder:
    """The real detector, recording the shape of every image it is handed."""

    def __init__(self, detector: FaceDetector) -> None:
        self.detector = detector
        self.name = detector.name
        self.shapes: list[tuple[int, ...]] = []

    def shifted(self, face: DetectedFace, *, dx: int, dy: int) -> DetectedFace:
        return self.detector.shifted(face, dx=dx, dy=dy)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        self.shapes.append(image.shape)
        return self.detector.detect(image)


def test_detection_copy_is_bounded_and_maps_back() -> None:
    from service.inference.faces import detection_copy

    image = Image.new("RGB", (6000, 4000), (90, 90, 90))
    small, (sx, sy) = detection_copy(image, max_side=1280)
    assert max(small.shape[:2]) <= 1280 and small.shape[2] == 3
    assert abs(sx * small.shape[1] - 6000) < 1e-6 and abs(sy * small.shape[0] - 4000) < 1e-6
    same, scale = detection_copy(np.zeros((300, 200, 3), np.uint8), max_side=1280)
    assert same.shape == (300, 200, 3) and scale == (1.0, 1.0)


@pytest.mark.kit
@pytest.mark.dlib
@pytest.mark.skipif(not dlib_available(), reason="dlib / face_recognition_models absent")
def test_a_huge_photo_is_detected_small_and_aligned_from_the_original(
    kit_dir: Path, kit_manifest: Path, dlib_detector: FaceDetector
) -> None:
    from service.inference.backbone import OnnxBackbone

    photo = Image.open(kit_dir / "lfw" / "photos" / KIT_PHOTO).convert("RGB")
    huge = photo.resize((5000, 5000), Image.Resampling.BICUBIC)  # the 250 px photo, 20x
    buf = io.BytesIO()
    huge.save(buf, format="JPEG", quality=92)
    recorder = ShapeRecorder(dlib_detector)
    image = decode_image(buf.getvalue(), max_bytes=64 << 20, max_pixels=40_000_000)
    start = time.perf_counter()
    (big,) = face_crops(image, detector=recorder, detect_max_side=1280)
    seconds = time.perf_counter() - start
    assert recorder.shapes == [(1250, 1250, 3)]  # never the 25-megapixel original
    (small,) = face_crops(np.asarray(photo), detector=dlib_detector)
    backbone = OnnxBackbone(kit_manifest)
    a, b = backbone.embed(np.stack([big.crop, small.crop]))
    assert float(a @ b) > 0.9, "the face aligned from the huge photo is not the same face"
    assert big.face is not None and big.face.box[2] > 1000  # landmarks in original pixels
    print(f"huge photo: detect + align {seconds:.2f} s, cosine to the 250 px path {a @ b:.4f}")


def _pipeline(*, detector: FaceDetector | None, max_request_pixels: int) -> Pipeline:
    def never(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("not reached: the request is refused before")

    return Pipeline(
        backbone=never,  # type: ignore[arg-type]
        detector=detector,
        snapshot=never,
        search=never,
        search_with_vectors=never,
        lookup=never,
        max_image_bytes=64 << 20,
        max_image_pixels=40_000_000,
        max_request_pixels=max_request_pixels,
        detect_max_side=1280,
        default_threshold=0.5,
    )


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_the_pixels_of_a_request_are_capped_before_decoding() -> None:
    pipeline = _pipeline(detector=None, max_request_pixels=3_000_000)
    images = [ImageUpload(_png(1500, 1000), "a.png"), ImageUpload(_png(1500, 1000), "b.png")]
    with pytest.raises(ImageError, match="6000000 pixels together; the limit is 3000000"):
        pipeline._crops(images * 2, per_image=True)  # the whole request is refused


def test_without_a_detector_a_photo_is_refused_from_its_header() -> None:
    truncated = _png(4000, 3000)[:200]  # a valid header, no pixel data
    pipeline = _pipeline(detector=None, max_request_pixels=64_000_000)
    with pytest.raises(ImageError, match="no detector installed"):
        pipeline._crops([ImageUpload(truncated, "photo.png")], per_image=False)
