"""Detection + alignment: face ordering, pass-through crops, and the kit reproduction checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.errors import ImageError, NoFaceFound
from service.inference.detect import (
    DetectedFace,
    DlibDetector,
    FaceDetector,
    dlib_available,
    make_detector,
    order_faces,
)
from service.inference.faces import aligned_faces, face_crops

needs_dlib = pytest.mark.skipif(
    not dlib_available(), reason="dlib / face_recognition_models absent"
)


def face(box: tuple[float, float, float, float]) -> DetectedFace:
    return DetectedFace(box=box, landmarks5=np.zeros((5, 2), np.float32), score=1.0)


def test_largest_then_most_central_face_first() -> None:
    shape = (200, 200, 3)
    small = face((0, 0, 20, 20))
    big_edge = face((0, 0, 100, 100))
    big_centre = face((50, 50, 150, 150))
    assert order_faces([small, big_edge, big_centre], image_shape=shape) == [
        big_centre,
        big_edge,
        small,
    ]
    much_bigger_near_centre = face((0, 0, 140, 140))
    assert order_faces([big_centre, much_bigger_near_centre], image_shape=shape)[0] is (
        much_bigger_near_centre
    )
    # A huge box mostly outside the image (a bystander's cut-off head) counts by what is visible.
    cut_off = face((-100, -100, 100, 100))
    assert order_faces([cut_off, big_centre], image_shape=shape)[0] is big_centre


def test_aligned_crop_passes_straight_through_without_a_detector() -> None:
    crop = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    (out,) = aligned_faces(crop, detector=None)
    assert np.array_equal(out, crop)


def test_photo_without_a_detector_says_so() -> None:
    with pytest.raises(ImageError, match="no detector installed: send aligned 112x112 crops"):
        aligned_faces(np.zeros((250, 250, 3), np.uint8), detector=None)
    assert make_detector("none") is None


@pytest.mark.dlib
@needs_dlib
def test_blank_photo_has_no_face(dlib_detector: FaceDetector) -> None:
    with pytest.raises(NoFaceFound, match="no face found"):
        aligned_faces(np.full((200, 200, 3), 128, np.uint8), detector=dlib_detector)


@pytest.mark.kit
@pytest.mark.dlib
@needs_dlib
def test_detect_align_embed_reproduces_kit_new_vectors(
    kit_dir: Path,
    kit_manifest: Path,
    kit_rows: dict[str, np.ndarray],
    dlib_detector: FaceDetector,
) -> None:
    """Our dlib landmarks + alignment + MobileFaceNet give the kit's ``new`` vectors.

    A fixed sample of 150 detected photos (the full figure: bench/alignment_check in
    docs/pipeline.md): cosine >= 0.99 for at least 99% of them.
    """
    from service.inference.backbone import OnnxBackbone
    from service.inference.images import read_image_file

    detector = dlib_detector
    backbone = OnnxBackbone(kit_manifest, batch_size=50)
    detected = np.flatnonzero(kit_rows["detected"])
    rows = np.random.default_rng(0).choice(detected, 150, replace=False)
    crops, landmark_error = [], []
    for i in rows:
        photo = read_image_file(kit_dir / "lfw" / "photos" / kit_rows["path"][i])
        (found,) = face_crops(photo, detector=detector)
        assert found.face is not None
        landmark_error.append(np.abs(found.face.landmarks5 - kit_rows["landmarks5"][i]).max())
        crops.append(found.crop)
    cosine = (backbone.embed(np.stack(crops)) * kit_rows["new"][rows]).sum(axis=1)
    assert np.mean(cosine >= 0.99) >= 0.99, np.sort(cosine)[:5]
    assert np.mean(np.array(landmark_error) < 0.01) >= 0.99  # the same landmarks as the kit


@pytest.mark.kit
def test_kit_landmarks_reproduce_kit_aligned_crops(
    kit_dir: Path, kit_rows: dict[str, np.ndarray]
) -> None:
    from service.inference.align import align_face
    from service.inference.images import read_image_file

    rows = np.random.default_rng(1).choice(len(kit_rows["path"]), 20, replace=False)
    for i in rows:
        photo = read_image_file(kit_dir / "lfw" / "photos" / kit_rows["path"][i])
        kit_crop = read_image_file(kit_dir / "lfw" / "aligned" / kit_rows["path"][i])
        crop = align_face(photo, kit_rows["landmarks5"][i])
        ours = crop.astype(np.int16)
        # The kit's crops are JPEG q95: the same round trip of ours gives the kit's bytes back
        # (Pillow's warp convention, exactly the kit's), up to a rare grey level.
        stored = jpeg_round_trip(crop, quality=95).astype(np.int16)
        assert np.abs(stored - kit_crop).mean() < 0.05
        assert np.abs(ours - kit_crop).mean() < 2.0  # the JPEG artefacts alone
        shifted = np.roll(ours, 1, axis=1)  # a 1-pixel misalignment is clearly worse
        assert np.abs(shifted - kit_crop).mean() > np.abs(ours - kit_crop).mean() + 1.0


def jpeg_round_trip(image: np.ndarray, *, quality: int) -> np.ndarray:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


@pytest.mark.kit
@pytest.mark.dlib
@needs_dlib
def test_dlib_descriptor_reproduces_kit_old_vectors(
    kit_dir: Path, kit_rows: dict[str, np.ndarray], dlib_detector: DlibDetector
) -> None:
    from service.inference.dlib_backbone import DlibDescriptor
    from service.inference.images import read_image_file

    descriptor = DlibDescriptor(detector=dlib_detector)
    rows = np.flatnonzero(kit_rows["detected"])[[0, 500, 3000]]
    for i in rows:
        photo = read_image_file(kit_dir / "lfw" / "photos" / kit_rows["path"][i])
        (found,) = descriptor.detector.detect(photo)[:1]
        vector = descriptor.embed_photo(photo, found)
        old = kit_rows["old"][i]
        assert 1.2 < np.linalg.norm(vector) < 1.6  # raw: not normalised here
        assert vector @ old / np.linalg.norm(vector) / np.linalg.norm(old) > 0.9999
