"""Decoding uploaded or on-disk images into H x W x 3 uint8 RGB arrays, safely.

Shared by the service and the training side (torch-free). Every way an image can be unusable ends
in one :class:`~service.errors.ImageError` (or :class:`~service.errors.PayloadTooLarge`) with a
message a caller can act on. Pixel limits are checked from the header, BEFORE the pixel data is
decoded, so a decompression bomb costs a few hundred bytes of parsing, not gigabytes of memory.
No Pillow global (``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``) is touched.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ImageError, PayloadTooLarge

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP")
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000  # e.g. 8000 x 5000; well below Pillow's own bomb limit

# Magic numbers of formats Pillow could read but we refuse, to name them in the error.
_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"%PDF", "PDF"),
)


def _sniff_other_format(data: bytes) -> str | None:
    for magic, name in _OTHER_FORMATS:
        if data.startswith(magic):
            return name
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypavif", b"ftypmif1"):
        return "HEIC/AVIF"
    return None


def _open(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """The image's header parsed (pixels not decoded yet), sizes checked."""
    size = len(data)
    if size == 0:
        raise ImageError("empty image: the upload has no bytes")
    if size > max_bytes:
        raise PayloadTooLarge(f"image has {size} bytes; the limit is {max_bytes}")
    try:
        # Pillow raises DecompressionBombError itself past 2 x Image.MAX_IMAGE_PIXELS (and only
        # warns below); our own, lower ``max_pixels`` is checked from the header just after.
        # (warnings.catch_warnings is not thread-safe, so the warning is left alone.)
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image has too many pixels (decompression bomb refused): {exc}") from exc
    except UnidentifiedImageError as exc:
        other = _sniff_other_format(data)
        if other is not None:
            raise ImageError(f"unsupported image format {other}; send JPEG, PNG or WebP") from exc
        raise ImageError(
            "not an image (or a corrupt one): cannot identify JPEG, PNG or WebP"
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"unreadable image header: {exc}") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        image.close()
        raise ImageError(f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        image.close()
        raise ImageError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    return image


def image_size(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header alone, with the checks of :func:`decode_image`."""
    with _open(data, max_bytes=max_bytes, max_pixels=max_pixels) as image:
        return image.size


def load_rgb_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes to a loaded RGB Pillow image, EXIF orientation applied.

    The errors of :func:`decode_image`. Kept as a Pillow image (one copy of the pixels) so a
    large photo is not converted to an array whole: see ``service.inference.faces``.
    """
    # Not closed with `with`: closing a Pillow image frees its pixels (the source is in memory).
    image = _open(data, max_bytes=max_bytes, max_pixels=max_pixels)
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as exc:
        # Pillow says "image file is truncated" / "broken data stream" etc.
        raise ImageError(f"truncated or corrupt {image.format} image: {exc}") from exc
    # In place: without an orientation tag, the default returns a copy of every pixel. A
    # corrupt EXIF block must not lose an otherwise good image.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)
    return image if image.mode == "RGB" else _to_rgb(image)


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> np.ndarray:
    """Decode JPEG/PNG/WebP bytes to a C-contiguous H x W x 3 uint8 RGB array.

    EXIF orientation is applied. Raises :class:`PayloadTooLarge` when ``data`` exceeds
    ``max_bytes`` and :class:`ImageError` for empty, non-image, unsupported, truncated or
    oversized (more than ``max_pixels`` pixels, checked from the header) images.
    """
    rgb = load_rgb_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas become white rather than whatever colour hides under alpha 0.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        gray = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")


def read_image_file(
    path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """:func:`decode_image` on a file's bytes; the message names the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    try:
        return decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    except ImageError as exc:
        raise type(exc)(f"{p}: {exc.detail}") from exc
    except PayloadTooLarge as exc:
        raise PayloadTooLarge(f"{p}: {exc.detail}") from exc
