"""decode_image: every kind of bad upload ends in one clear ImageError / PayloadTooLarge."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.errors import ImageError, PayloadTooLarge
from service.inference.images import decode_image

LIMITS = {"max_bytes": 1_000_000, "max_pixels": 4_000_000}


def encode(array: np.ndarray, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **params)
    return buf.getvalue()


def gradient(height: int = 60, width: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 128)], -1).astype(
        np.uint8
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_supported_formats_decode_to_rgb(fmt: str) -> None:
    image = gradient()
    out = decode_image(
        encode(image, fmt, quality=95) if fmt != "PNG" else encode(image, fmt), **LIMITS
    )
    assert out.shape == (60, 40, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.abs(out.astype(int) - image).mean() < 3  # lossy formats are close, PNG exact
    if fmt == "PNG":
        assert np.array_equal(out, image)


def test_grayscale_and_rgba_become_rgb() -> None:
    gray = decode_image(encode(np.full((10, 12), 77, np.uint8), "PNG"), **LIMITS)
    assert gray.shape == (10, 12, 3) and (gray == 77).all()
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255  # top half opaque red, bottom half transparent -> white
    out = decode_image(encode(rgba, "PNG"), **LIMITS)
    assert (out[:5] == [200, 0, 0]).all() and (out[5:] == 255).all()


def test_empty_upload() -> None:
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"", **LIMITS)


def test_random_bytes_are_not_an_image() -> None:
    data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError, match="not an image"):
        decode_image(data, **LIMITS)


def test_unsupported_format_is_named() -> None:
    with pytest.raises(ImageError, match="unsupported image format GIF"):
        decode_image(encode(gradient(), "GIF"), **LIMITS)
    with pytest.raises(ImageError, match="unsupported image format BMP"):
        decode_image(encode(gradient(), "BMP"), **LIMITS)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(fmt: str) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    data = encode(noise, fmt)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], **LIMITS)


def test_too_many_bytes() -> None:
    data = encode(gradient(), "PNG")
    with pytest.raises(PayloadTooLarge, match="limit"):
        decode_image(data, max_bytes=len(data) - 1, max_pixels=LIMITS["max_pixels"])
    assert decode_image(data, max_bytes=len(data), max_pixels=LIMITS["max_pixels"]).shape[0] == 60


def test_pixel_limit_checked_from_the_header_before_decoding() -> None:
    # 60000 x 60000 = 3.6e9 pixels (10.8 GB decoded), but the file is ~100 bytes and the
    # IDAT is garbage-short: only a header check can refuse it without a truncation error.
    bomb = png_header_only(60_000, 60_000)
    assert len(bomb) < 200
    with pytest.raises(ImageError, match=r"too many pixels|the limit is"):
        decode_image(bomb, **LIMITS)
    # Within Pillow's own limit but over ours: our message with the numbers.
    with pytest.raises(ImageError, match=r"3000x2000 = 6000000 pixels; the limit is 4000000"):
        decode_image(png_header_only(3000, 2000), **LIMITS)


def test_pillow_globals_untouched() -> None:
    from PIL import ImageFile

    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    with pytest.raises(ImageError):
        decode_image(png_header_only(60_000, 60_000), **LIMITS)
    assert before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)


def test_exif_orientation_is_applied() -> None:
    image = gradient(60, 40)  # portrait, stored as is
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=98, exif=exif.tobytes())
    out = decode_image(buf.getvalue(), **LIMITS)
    assert out.shape == (40, 60, 3)
    expected = np.rot90(image, k=-1)  # 90 degrees clockwise
    assert np.abs(out.astype(int) - expected).mean() < 3
    assert np.abs(out.astype(int) - np.rot90(image, k=1)).mean() > 20
