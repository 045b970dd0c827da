"""Alignment maths: Umeyama recovers known similarities; the warp follows the kit's (Pillow's)
pixel convention."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import ImageError
from service.inference.align import (
    ARCFACE_TEMPLATE_112,
    align_face,
    alignment_matrix,
    umeyama,
    warp_affine,
)


def similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty], [0, 0, 1.0]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:2, :2].T + matrix[:2, 2]


@pytest.mark.parametrize("seed", range(5))
def test_umeyama_recovers_a_known_similarity(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = similarity(rng.uniform(0.3, 3), rng.uniform(-np.pi, np.pi), *rng.uniform(-50, 50, 2))
    src = rng.uniform(0, 250, (5, 2))
    estimate = umeyama(src, apply(truth, src))
    np.testing.assert_allclose(estimate, truth, atol=1e-9)


def test_umeyama_is_least_squares_under_noise() -> None:
    rng = np.random.default_rng(7)
    truth = similarity(0.8, 0.3, 10, -4)
    src = rng.uniform(0, 250, (200, 2))
    dst = apply(truth, src) + rng.normal(0, 0.5, (200, 2))
    estimate = umeyama(src, dst)
    np.testing.assert_allclose(estimate[:2, :2], truth[:2, :2], atol=0.01)
    np.testing.assert_allclose(estimate[:2, 2], truth[:2, 2], atol=0.5)
    # The estimate is the least-squares one: it fits the noisy points at least as well as truth.
    assert ((apply(estimate, src) - dst) ** 2).sum() <= ((apply(truth, src) - dst) ** 2).sum()


def test_umeyama_never_reflects() -> None:
    src = np.array([[0.0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.2]])
    mirrored = src * [-1, 1]
    estimate = umeyama(src, mirrored)
    assert np.linalg.det(estimate[:2, :2]) > 0


def test_alignment_maps_landmarks_onto_the_template() -> None:
    truth = similarity(2.2, 0.2, 40, 30)
    inverse = np.linalg.inv(truth)
    landmarks = apply(inverse, ARCFACE_TEMPLATE_112)  # where a face would be in a photo
    np.testing.assert_allclose(alignment_matrix(landmarks), truth[:2], atol=1e-9)
    with pytest.raises(ImageError, match="5 finite"):
        alignment_matrix(np.zeros((4, 2)))


def test_warp_uses_pillows_pixel_convention_like_the_kit() -> None:
    # A horizontal ramp: value = 2 * x. Downscaling by 2 with Pillow's convention (the kit's: the
    # inverse handed to Image.transform as is) samples pixel-edge coordinate 2 * (x_out + 0.5),
    # i.e. centre coordinate 2 * x_out + 0.5: value 4 * x_out + 1. OpenCV's warpAffine would
    # sample 2 * x_out (value 4 * x_out): half a pixel off the kit's crops.
    ramp = np.tile((2 * np.arange(128)).astype(np.uint8)[None, :, None], (16, 1, 3))
    out = warp_affine(ramp, np.array([[0.5, 0, 0], [0, 0.5, 0]]), size=(32, 8))
    np.testing.assert_array_equal(out[:, :, 0], np.tile(4 * np.arange(32) + 1, (8, 1)))


def test_warp_integer_translation_moves_pixels_exactly() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out = warp_affine(image, np.array([[1.0, 0, 3], [0, 1.0, -2]]), size=(50, 40))
    np.testing.assert_array_equal(out[0:38, 3:50], image[2:40, 0:47])
    assert (out[:, :3] == 0).all() and (out[38:] == 0).all()  # black border


def test_align_face_puts_marked_points_on_the_template() -> None:
    # Draw bright dots at the landmarks of a rotated, scaled face; after alignment the dots
    # must sit at the template positions.
    truth = similarity(0.45, -0.25, 20, 35)
    landmarks = apply(np.linalg.inv(truth), ARCFACE_TEMPLATE_112)
    photo = np.zeros((300, 300, 3), np.uint8)
    for x, y in np.round(landmarks).astype(int):
        photo[y - 3 : y + 4, x - 3 : x + 4] = 255
    crop = align_face(photo, landmarks)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    for x, y in ARCFACE_TEMPLATE_112:
        assert crop[round(y), round(x)].min() > 150
