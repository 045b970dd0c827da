"""The image stages the pipeline shares: request pixel budget, decode, face check or detect +
align (one detection at a time: dlib's detector objects are not documented as thread-safe).
A base of :class:`service.pipeline.Pipeline`; blocking, run in the app's thread pool."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from service.errors import FacebridgeError, ImageError, InvalidInput
from service.inference.align import ARCFACE_SIZE
from service.inference.detect import FaceDetector
from service.inference.facecheck import CropFaceCheck
from service.inference.faces import NO_DETECTOR_MESSAGE, FaceCrop, aligned_faces, face_crops
from service.inference.images import image_size, load_rgb_image
from service.pipeline_types import ImageUpload, StageTimes


class ImageStages:
    """Uploads to aligned 112 x 112 crops, within the size and pixel limits."""

    def __init__(
        self,
        *,
        detector: FaceDetector | None,
        max_image_bytes: int,
        max_image_pixels: int,
        max_request_pixels: int | None = None,
        detect_max_side: int | None = None,
        face_check: CropFaceCheck | None = None,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.detector = detector
        self.max_image_bytes = int(max_image_bytes)
        self.max_image_pixels = int(max_image_pixels)
        self.max_request_pixels = max_request_pixels
        self.detect_max_side = detect_max_side
        self.face_check = face_check
        self._observe = observe or (lambda stage, seconds: None)
        # dlib's detector objects are not documented as thread-safe: one detection at a time.
        self._detector_lock = threading.Lock()

    def _crop(self, upload: ImageUpload, size: tuple[int, int], t: StageTimes) -> np.ndarray:
        if self.detector is None and size != (ARCFACE_SIZE, ARCFACE_SIZE):
            width, height = size  # refused from the header: no need to decode a photo
            raise ImageError(f"{NO_DETECTOR_MESSAGE} (got a {width}x{height} image)")
        start = time.perf_counter()
        image = load_rgb_image(
            upload.data, max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels
        )
        t.decode = time.perf_counter() - start
        start = time.perf_counter()
        try:
            if self.detector is None:
                faces = aligned_faces(image, detector=None, face_check=self.face_check)
            else:
                with self._detector_lock:
                    faces = aligned_faces(
                        image,
                        detector=self.detector,
                        face_check=self.face_check,
                        detect_max_side=self.detect_max_side,
                    )
        finally:
            t.align = time.perf_counter() - start
        self._observe("decode", t.decode)
        self._observe("align", t.align)
        return faces[0]

    def _crops(
        self, images: Sequence[ImageUpload], *, per_image: bool
    ) -> tuple[np.ndarray, list[StageTimes], list[int], dict[int, FacebridgeError]]:
        """(crops of the usable images, timings per upload, their upload indices, errors).

        ``per_image`` False: the first failing image raises (named in a batch)."""
        if not images:
            raise InvalidInput("no image: send at least one multipart part named 'image'")
        crops: list[np.ndarray] = []
        times = [StageTimes() for _ in images]
        ok: list[int] = []
        errors: dict[int, FacebridgeError] = {}

        def failed(i: int, exc: FacebridgeError) -> None:
            if len(images) > 1:
                # Name the image so a batch caller knows which part failed.
                exc.detail = f"image {i}: {exc.detail}"
                exc.args = (exc.detail,)
                exc.extra.setdefault("image_index", i)
            if not per_image:
                raise exc
            errors[i] = exc

        # Headers first: the request's pixel budget is checked before anything is decoded.
        sizes: dict[int, tuple[int, int]] = {}
        for i, upload in enumerate(images):
            try:
                sizes[i] = image_size(
                    upload.data, max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels
                )
            except FacebridgeError as exc:
                failed(i, exc)
        total = sum(width * height for width, height in sizes.values())
        if self.max_request_pixels is not None and total > self.max_request_pixels:
            raise ImageError(
                f"the images of this request have {total} pixels together; the limit is "
                f"{self.max_request_pixels} (send fewer or smaller images)"
            )
        for i, size in sizes.items():
            try:
                crops.append(self._crop(images[i], size, times[i]))
                ok.append(i)
            except FacebridgeError as exc:
                failed(i, exc)
        stacked = np.stack(crops) if crops else np.zeros((0, 112, 112, 3), np.uint8)
        return stacked, times, ok, errors

    def detect(self, *, image: ImageUpload) -> tuple[tuple[int, int], list[FaceCrop]]:
        """(width, height) of the decoded image and its aligned faces, the one identify uses
        first; an aligned 112 x 112 crop passes through (no detection)."""
        decoded = load_rgb_image(
            image.data, max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels
        )
        if self.detector is None:
            crops = face_crops(decoded, detector=None, face_check=self.face_check)
        else:
            with self._detector_lock:
                crops = face_crops(
                    decoded,
                    detector=self.detector,
                    all_faces=True,
                    face_check=self.face_check,
                    detect_max_side=self.detect_max_side,
                )
        return decoded.size, crops
