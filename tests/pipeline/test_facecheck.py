"""The face check on 112x112 uploads: generated non-faces refused, kit aligned crops accepted,
and the pipeline answers a refused crop with the no-face problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.errors import ContractError, NoFaceFound
from service.inference.faces import aligned_faces
from training.evaluation.nonfaces import GENERATED, generated_nonfaces

pytestmark = pytest.mark.dlib
dlib = pytest.importorskip("dlib")

from service.inference.facecheck import DlibCropCheck, make_face_check  # noqa: E402


@pytest.fixture(scope="module")
def check() -> DlibCropCheck:
    return DlibCropCheck()


def test_generated_non_faces_are_refused(check: DlibCropCheck) -> None:
    items = generated_nonfaces(per_category=12, seed=5)
    assert {i.category for i in items} == set(GENERATED) and len(items) == 48
    accepted = [i.category for i in items if check.check(i.image).accepted]
    assert accepted == []  # the full set (bench/facecheck.py): 100% refused


def test_a_grey_square_is_no_face_in_the_pipeline(check: DlibCropCheck) -> None:
    grey = np.full((112, 112, 3), 128, np.uint8)
    with pytest.raises(NoFaceFound, match="does not look like an aligned face"):
        aligned_faces(grey, detector=None, face_check=check)
    (out,) = aligned_faces(grey, detector=None, face_check=None)  # no check: passes
    assert out.shape == (112, 112, 3)


def test_make_face_check_names() -> None:
    assert make_face_check("off") is None
    assert isinstance(make_face_check("dlib"), DlibCropCheck)
    assert isinstance(make_face_check("auto"), DlibCropCheck)
    with pytest.raises(ContractError):
        make_face_check("nope")  # type: ignore[arg-type]


@pytest.mark.kit
def test_kit_aligned_crops_are_accepted_and_their_backgrounds_refused(
    check: DlibCropCheck, kit_dir: Path, kit_rows: dict[str, np.ndarray]
) -> None:
    from service.inference.images import read_image_file
    from training.evaluation.nonfaces import background_crops, subject_box

    rows = np.random.default_rng(2).choice(len(kit_rows["path"]), 60, replace=False)
    crops = [read_image_file(kit_dir / "lfw" / "aligned" / kit_rows["path"][i]) for i in rows]
    results = [check.check(c) for c in crops]
    assert all(r.accepted for r in results), [r.reason for r in results if not r.accepted]
    (found,) = aligned_faces(crops[0], detector=None, face_check=check)
    assert np.array_equal(found, crops[0])
    photos = (
        (
            read_image_file(kit_dir / "lfw" / "photos" / kit_rows["path"][i]),
            [subject_box(kit_rows["landmarks5"][i])],
            str(kit_rows["path"][i]),
        )
        for i in rows
    )
    backgrounds = background_crops(photos, count=30, seed=1)
    assert len(backgrounds) >= 20
    assert not [b.note for b in backgrounds if check.check(b.image).accepted]
