"""A generated set of 112 x 112 NON-face images, for measuring the face check (torch-free).

Categories (each image seeded, so a set is reproducible):
- ``flat``: one random colour;
- ``noise``: uniform, Gaussian, salt-and-pepper or blurred (blobby) noise, grey or colour;
- ``gradient``: linear (any angle) or radial gradients between two random colours;
- ``text``: random words rendered with Pillow's bundled font, random sizes and colours;
- ``background``: crops of photo regions away from every face (needs photos: the kit's).
  A region is kept only when it does not overlap the face box of the photo's subject (from the
  kit's ``landmarks5``) or any face dlib finds in the photo (bystanders), so no face hides in it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 112
GENERATED = ("flat", "noise", "gradient", "text")
WORDS = (
    "facebridge", "gallery", "identify", "ACCESS", "denied", "Welcome", "2026", "exit",
    "LOBBY", "badge", "Hello world", "lorem ipsum", "42", "SALE", "open", "CAM-3", "visitor",
)  # fmt: skip


@dataclass(frozen=True)
class NonFace:
    category: str
    image: np.ndarray  # 112 x 112 x 3 uint8 RGB
    note: str = ""


def _flat(rng: np.random.Generator) -> np.ndarray:
    colour = rng.integers(0, 256, 3, dtype=np.uint8)
    return np.broadcast_to(colour, (SIZE, SIZE, 3)).copy()


def _noise(rng: np.random.Generator) -> np.ndarray:
    kind = int(rng.integers(4))
    channels = 3 if rng.random() < 0.5 else 1
    shape = (SIZE, SIZE, channels)
    if kind == 0:
        arr = rng.integers(0, 256, shape).astype(np.float64)
    elif kind == 1:
        arr = rng.normal(rng.uniform(60, 200), rng.uniform(10, 70), shape)
    elif kind == 2:
        arr = np.where(rng.random(shape) < 0.5, 0.0, 255.0)
    else:
        small = rng.integers(0, 256, (int(rng.integers(4, 24)),) * 2 + (channels,))
        image = Image.fromarray(small.astype(np.uint8).squeeze())
        arr = np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BICUBIC), np.float64)
        arr = arr.reshape(shape)
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(arr, (SIZE, SIZE, 3)))


def _gradient(rng: np.random.Generator) -> np.ndarray:
    a, b = rng.uniform(0, 255, (2, 3))
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xs + np.sin(angle) * ys + 1.0) / 2.0
    else:
        cx, cy = rng.uniform(0, 1, 2)
        t = np.clip(np.hypot(xs - cx, ys - cy) / rng.uniform(0.3, 1.2), 0, 1)
    return (a + (b - a) * t[..., None]).astype(np.uint8)


def _text(rng: np.random.Generator) -> np.ndarray:
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        font = ImageFont.load_default(size=float(rng.uniform(10, 40)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        position = (float(rng.uniform(-10, 80)), float(rng.uniform(-5, 95)))
        draw.text(position, str(rng.choice(WORDS)), fill=colour, font=font)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    return np.asarray(image)


_MAKERS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "flat": _flat,
    "noise": _noise,
    "gradient": _gradient,
    "text": _text,
}


def generated_nonfaces(
    *, per_category: int, seed: int = 0, categories: Sequence[str] = GENERATED
) -> list[NonFace]:
    """``per_category`` images of each generated category (no photos needed)."""
    out: list[NonFace] = []
    for c, category in enumerate(categories):
        rng = np.random.default_rng([seed, c])
        out += [NonFace(category, _MAKERS[category](rng)) for _ in range(per_category)]
    return out


Box = tuple[float, float, float, float]


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def subject_box(landmarks5: np.ndarray, *, margin: float = 0.5) -> Box:
    """A box around a face from its 5 landmarks: centre +- landmark span x (1 + margin)
    (about the whole head)."""
    points = np.asarray(landmarks5, dtype=np.float64)
    centre = points.mean(axis=0)
    span = float(np.ptp(points, axis=0).max()) * (1.0 + margin)
    return (centre[0] - span, centre[1] - span, centre[0] + span, centre[1] + span)


def background_crops(
    photos: Iterator[tuple[np.ndarray, Sequence[Box], str]],
    *,
    count: int,
    seed: int = 0,
    attempts: int = 20,
) -> list[NonFace]:
    """Up to ``count`` face-free regions (32-72 px squares, resized to 112) of ``photos``:
    (photo, face boxes to avoid, name) triples. Regions overlapping any box are skipped."""
    rng = np.random.default_rng(seed)
    out: list[NonFace] = []
    for photo, boxes, name in photos:
        height, width = photo.shape[:2]
        for _ in range(attempts):
            side = int(rng.integers(32, min(72, height, width) + 1))
            x0, y0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            region: Box = (x0, y0, x0 + side, y0 + side)
            if any(_overlaps(region, box) for box in boxes):
                continue
            crop = Image.fromarray(photo[y0 : y0 + side, x0 : x0 + side])
            resized = np.asarray(crop.resize((SIZE, SIZE), Image.Resampling.BILINEAR))
            out.append(NonFace("background", resized, note=f"{name} {region}"))
            break
        if len(out) >= count:
            break
    return out
