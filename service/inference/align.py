"""5-point similarity alignment to the standard ArcFace 112 x 112 template (NumPy + Pillow).

The similarity transform is Umeyama's least-squares estimate (rotation, uniform scale,
translation) from the landmarks to the template. The warp is exactly the sample kit's: Pillow's
``Image.transform(size, AFFINE, inverse, BILINEAR)`` with the inverse similarity as is, in
Pillow's own pixel convention (no half-pixel correction; black border). Reproducing it exactly
matters: with the kit's ``landmarks5`` our crop equals the kit's ``aligned/`` crop up to its JPEG
q95 compression (MobileFaceNet cosine median 1.0000 after the same JPEG round trip;
``bench/alignment_check.py``). OpenCV's ``warpAffine`` (InsightFace's ``norm_crop``) samples
half a pixel elsewhere; it is not what the kit did.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from service.errors import ImageError

# (left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner), in the
# image's left-to-right order, for a 112 x 112 crop (InsightFace arcface_dst).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ARCFACE_SIZE = 112


def umeyama(src: np.ndarray, dst: np.ndarray, *, estimate_scale: bool = True) -> np.ndarray:
    """The 3 x 3 similarity matrix T minimising sum ||T(src_i) - dst_i||^2 (Umeyama 1991).

    ``src`` and ``dst`` are [n, 2] point sets (n >= 2, not all coincident).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"umeyama needs two [n>=2, 2] point sets, got {src.shape} and {dst.shape}")
    n = src.shape[0]
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1.0
    u, s, vt = np.linalg.svd(cov)
    rank = int(np.linalg.matrix_rank(cov))
    if rank == 0:
        raise ValueError("umeyama: degenerate point set (all points coincide)")
    if rank == 1:
        # Collinear points: pick the rotation (never a reflection) from the singular vectors.
        flip = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) > 0 else -1.0])
        rotation = u @ np.diag(flip) @ vt
    else:
        rotation = u @ np.diag(d) @ vt
    var_src = (src_c**2).sum() / n
    scale = float((s * d).sum() / var_src) if estimate_scale else 1.0
    t = np.eye(3)
    t[:2, :2] = scale * rotation
    t[:2, 2] = dst_mean - scale * rotation @ src_mean
    return t


def template_for_size(size: int = ARCFACE_SIZE) -> np.ndarray:
    """The ArcFace template scaled to a ``size`` x ``size`` crop."""
    return ARCFACE_TEMPLATE_112 * (size / ARCFACE_SIZE)


def alignment_matrix(landmarks5: np.ndarray, *, size: int = ARCFACE_SIZE) -> np.ndarray:
    """The 2 x 3 similarity matrix mapping image landmark coordinates to crop coordinates."""
    points = np.asarray(landmarks5, dtype=np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise ImageError(f"need 5 finite (x, y) landmarks, got shape {points.shape}")
    return umeyama(points, template_for_size(size))[:2]


def warp_affine(
    image: np.ndarray | Image.Image, matrix: np.ndarray, *, size: tuple[int, int]
) -> np.ndarray:
    """Pillow's bilinear affine warp by ``matrix`` (black border), the kit's convention.

    ``matrix`` maps input coordinates to output ones; ``size`` is (width, height). Pillow is
    handed the inverse unchanged, exactly as the kit's crops were made.
    """
    m = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    try:
        inverse = np.linalg.inv(m)
    except np.linalg.LinAlgError as exc:
        raise ImageError("alignment transform is singular (degenerate landmarks)") from exc
    a, b, c = inverse[0]
    d, e, f = inverse[1]
    source = (
        image
        if isinstance(image, Image.Image)  # a large photo is sampled in place, never copied
        else Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    )
    warped = source.transform(
        size, Image.Transform.AFFINE, (a, b, c, d, e, f), resample=Image.Resampling.BILINEAR
    )
    return np.ascontiguousarray(np.asarray(warped, dtype=np.uint8))


def align_face(
    image: np.ndarray | Image.Image, landmarks5: np.ndarray, *, size: int = ARCFACE_SIZE
) -> np.ndarray:
    """Warp ``image`` (H x W x 3 uint8, or an RGB Pillow image) so ``landmarks5`` land on the
    ArcFace template.

    ``landmarks5`` = (left eye centre, right eye centre, nose tip, left mouth corner, right mouth
    corner) in image pixels, "left" meaning the image's left. Returns size x size x 3 uint8.
    """
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise ImageError(f"expected an RGB image, got mode {image.mode}")
    elif image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"expected an H x W x 3 image, got shape {image.shape}")
    matrix = alignment_matrix(landmarks5, size=size)
    return warp_affine(image, matrix, size=(size, size))
