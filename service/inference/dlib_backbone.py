"""The face_recognition library's "old model": dlib's ResNet descriptor (128-d), as an adapter.

``dlib_face_recognition_resnet_model_v1`` does its own alignment: it needs the PHOTO and dlib's
landmark shape of the face, not a 112 x 112 ArcFace crop. :meth:`DlibDescriptor.embed_photo`
therefore takes the photo and a :class:`DetectedFace` from :class:`DlibDetector` (whose 68-point
shape is what the kit's ``old`` vectors were computed from: they reproduce to cosine 1.0).

Output is NOT normalised here (norm about 1.4, as the face_recognition library returns it):
an old-model vector is a gallery vector, and gallery vectors are L2-normalised once where
they enter the gallery, and pairs vectors once at load. The pairs store keeps them raw.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.contracts import KIT_OLD_MODEL_ID
from service.errors import ContractError
from service.inference.detect import DetectedFace, DlibDetector, dlib_model_path

DLIB_OUTPUT_DIM = 128


class DlibDescriptor:
    """dlib's face descriptor on photos; ``model_id`` = the kit's old model id."""

    model_id = KIT_OLD_MODEL_ID
    output_dim = DLIB_OUTPUT_DIM
    needs_photo = True

    def __init__(self, *, detector: DlibDetector | None = None, num_jitters: int = 0) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise ContractError(
                "dlib is not installed: install the [detect] extra (dlib-bin)"
            ) from exc
        self._model = dlib.face_recognition_model_v1(dlib_model_path("descriptor"))
        self.detector = detector if detector is not None else DlibDetector()
        # 0 = one pass on the undistorted chip (what face_recognition's default num_jitters=1 does).
        self.num_jitters = int(num_jitters)
        self._lock = threading.Lock()

    def _shape(self, image: np.ndarray, face: DetectedFace) -> Any:
        if face.native is not None and hasattr(face.native, "parts"):
            return face.native
        return self.detector.face_from_box(image, face.box, score=face.score).native

    def embed_photo(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """One raw (unnormalised) float32 [128] descriptor of ``face`` in ``image``."""
        return self.embed_photos([image], [face])[0]

    def embed_photos(
        self, images: Sequence[np.ndarray], faces: Sequence[DetectedFace]
    ) -> np.ndarray:
        """Raw float32 [N, 128] descriptors, one per (photo, face)."""
        if len(images) != len(faces):
            raise ValueError(f"{len(images)} images but {len(faces)} faces")
        out = np.empty((len(images), self.output_dim), dtype=np.float32)
        for row, (image, face) in enumerate(zip(images, faces, strict=True)):
            rgb = np.ascontiguousarray(image, dtype=np.uint8)
            shape = self._shape(rgb, face)
            with self._lock:
                if self.num_jitters > 0:
                    vector = self._model.compute_face_descriptor(rgb, shape, self.num_jitters)
                else:
                    vector = self._model.compute_face_descriptor(rgb, shape)
            out[row] = np.asarray(vector, dtype=np.float32)
        return out
