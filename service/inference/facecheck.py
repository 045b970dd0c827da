"""The face check for images that skip detection: is this 112 x 112 "aligned crop" a face?

A 112 x 112 upload is taken as an aligned crop and goes straight to the backbone, so without a
check a grey square could be enrolled (and black or noise squares then "match" it at 0.95).
:class:`DlibCropCheck` runs dlib's HOG frontal-face detector on the crop itself: upscaled
(the detector's window is 80 x 80 pixels; an aligned face is ~70 px wide at 112; x1.157 by
default, ``FACEBRIDGE_FACE_CHECK_UPSCALE``) and padded by
replicating its border (the aligned face touches the crop's edges), at a detection score of at
least ``min_score`` (dlib's own threshold is 0; the kit's aligned faces are aligned well enough
that -0.5 accepts all of them), and the detected box must sit where an aligned face sits
(its centre within ``max_offset`` of the crop centre, its width between ``min_width`` and
``max_width`` of the crop). Nothing is downloaded: the detector ships inside dlib
(the ``[detect]`` extra, ``dlib-bin``).

Measured by ``bench/facecheck.py`` (README, docs/pipeline.md): kit ``aligned/`` crops accepted,
a generated non-face set (flat colours, noise, gradients, kit photo backgrounds, rendered text)
refused. ~2.4 ms per crop on one core at the default upscale (~7 ms at x2).
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from PIL import Image

from service.errors import ContractError, NoFaceFound
from service.inference.align import ARCFACE_SIZE
from service.settings_request import FACE_CHECK_UPSCALE

FaceCheckName = Literal["auto", "dlib", "off"]
# The crop is resized to ARCFACE_SIZE * upscale and padded by PAD_FRACTION of that on each side.
# The detector scans a pyramid (each level 5/6 of the one above) down to its 80 x 80 window, so
# its cost grows with the square of the upscale: x2 (~7 ms per crop on one core) finds faces
# down to 0.36 of the crop's width, 1.157 ~ 2 * (5/6)**3 (the default, ~2.4 ms) down to 0.62,
# and an aligned face is wider (bench/facecheck.py: 99.93% of the kit's aligned crops accepted,
# 100% of 1,500 non-faces refused, vs 99.90% / 100% at x2).
DEFAULT_UPSCALE = FACE_CHECK_UPSCALE  # FACEBRIDGE_FACE_CHECK_UPSCALE
PAD_FRACTION = 1.0 / 14.0


@dataclass(frozen=True)
class FaceCheckResult:
    """``score``: the best plausible detection's score (-inf when none); ``accepted``."""

    accepted: bool
    score: float
    reason: str = ""


class CropFaceCheck(Protocol):
    """Says whether an aligned crop shows a face."""

    name: str

    def check(self, crop: np.ndarray) -> FaceCheckResult: ...


class DlibCropCheck:
    """dlib's HOG detector on the (upscaled, border-padded) crop; see the module docstring."""

    name = "dlib"

    def __init__(
        self,
        *,
        min_score: float = -0.5,
        max_offset: float = 0.2,
        min_width: float = 0.35,
        max_width: float = 1.2,
        upscale: float = DEFAULT_UPSCALE,
    ) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise ContractError(
                "the dlib face check needs dlib: install the [detect] extra (dlib-bin)"
            ) from exc
        self._detector = dlib.get_frontal_face_detector()
        self.min_score = float(min_score)
        self.max_offset = float(max_offset)
        self.min_width = float(min_width)
        self.max_width = float(max_width)
        if not 1.0 <= upscale <= 3.0:
            raise ContractError(f"face check upscale {upscale} outside [1, 3]")
        self.size = round(ARCFACE_SIZE * upscale)
        self.pad = max(1, round(self.size * PAD_FRACTION))
        self._lock = threading.Lock()  # dlib objects are not documented as thread-safe

    def _prepared(self, crop: np.ndarray) -> np.ndarray:
        """The crop as the detector sees it: grey (luma), upscaled, border-replicated.

        Grey, because dlib's HOG on an RGB image computes gradients on each channel and keeps
        the strongest (~1.4x the cost of one channel, docs/service.md "Where the time goes");
        luma keeps the face's edges (bench/facecheck.py: same acceptance and refusal)."""
        size, pad = self.size, self.pad
        image = Image.fromarray(np.ascontiguousarray(crop, dtype=np.uint8)).convert("L")
        if image.size != (ARCFACE_SIZE, ARCFACE_SIZE):
            image = image.resize((ARCFACE_SIZE, ARCFACE_SIZE), Image.Resampling.BILINEAR)
        return edge_padded(np.asarray(image.resize((size, size), Image.Resampling.BILINEAR)), pad)

    def check(self, crop: np.ndarray) -> FaceCheckResult:
        if crop.ndim != 3 or crop.shape[2] != 3:
            return FaceCheckResult(accepted=False, score=float("-inf"), reason="not RGB")
        prepared = self._prepared(crop)
        with self._lock:
            # adjust_threshold below min_score so weak detections come back with their score
            rects, scores, _ = self._detector.run(prepared, 0, min(self.min_score, 0.0) - 0.5)
        size = self.size
        centre = self.pad + size / 2.0
        best = float("-inf")
        for rect, score in zip(rects, scores, strict=True):
            width = float(rect.right() - rect.left())
            cx = (rect.left() + rect.right()) / 2.0
            cy = (rect.top() + rect.bottom()) / 2.0
            offset = max(abs(cx - centre), abs(cy - centre)) / size
            plausible = (
                offset <= self.max_offset
                and self.min_width * size <= width <= self.max_width * size
            )
            if plausible:
                best = max(best, float(score))
        if best >= self.min_score:
            return FaceCheckResult(accepted=True, score=best)
        reason = "no face-shaped region" if best == float("-inf") else f"weak face ({best:.2f})"
        return FaceCheckResult(accepted=False, score=best, reason=reason)


def edge_padded(image: np.ndarray, pad: int) -> np.ndarray:
    """``image`` [h, w] with its border pixels repeated ``pad`` times on each side: the same
    as ``np.pad(image, pad, mode="edge")`` at a fraction of its cost on a small image."""
    h, w = image.shape
    out = np.empty((h + 2 * pad, w + 2 * pad), dtype=image.dtype)
    out[pad : pad + h, pad : pad + w] = image
    out[pad : pad + h, :pad] = image[:, :1]
    out[pad : pad + h, pad + w :] = image[:, -1:]
    out[:pad] = out[pad]
    out[pad + h :] = out[pad + h - 1]
    return out


def make_face_check(
    name: FaceCheckName = "auto", *, upscale: float = DEFAULT_UPSCALE
) -> CropFaceCheck | None:
    """``"dlib"`` (error when dlib is missing), ``"off"`` (None) or ``"auto"`` (dlib when
    installed, else None: crops then pass unchecked, and the service says so at start). Only
    dlib itself is needed (``dlib-bin``): the HOG detector ships inside it, no weights file."""
    if name == "off":
        return None
    if name == "dlib":
        return DlibCropCheck(upscale=upscale)
    if name == "auto":
        if importlib.util.find_spec("dlib") is None:
            return None
        return DlibCropCheck(upscale=upscale)
    raise ContractError(f"unknown face check {name!r}; choose auto, dlib or off")


def require_face(check: CropFaceCheck | None, crop: np.ndarray) -> None:
    """Raise :class:`NoFaceFound` when ``check`` refuses ``crop`` (no-op without a check)."""
    if check is None:
        return
    result = check.check(crop)
    if not result.accepted:
        raise NoFaceFound(
            f"the 112x112 image does not look like an aligned face ({result.reason}); "
            "send an aligned face crop or a photo"
        )
