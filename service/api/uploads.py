"""Reading multipart uploads into bytes, with the media-type checks every upload route shares."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import UploadFile

from service.errors import InvalidInput, UnsupportedMediaType
from service.pipeline import ImageUpload

IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
# Clients that do not label their parts send these; the decoder sniffs the real format.
GENERIC_MEDIA_TYPES = frozenset({"", "application/octet-stream"})


def _media_type(upload: UploadFile) -> str:
    return (upload.content_type or "").split(";")[0].strip().lower()


def check_media_type(upload: UploadFile, *, allowed: frozenset[str], what: str) -> None:
    media = _media_type(upload)
    if media not in allowed and media not in GENERIC_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"{what} {upload.filename or ''!s}: content type {media!r} is not accepted; "
            f"send one of {', '.join(sorted(allowed))}".replace("  ", " ")
        )


async def read_images(uploads: Sequence[UploadFile], *, max_images: int) -> list[ImageUpload]:
    """The uploaded image parts as bytes, in order (415 for a non-image part)."""
    if len(uploads) > max_images:
        raise InvalidInput(f"{len(uploads)} images in one request; the limit is {max_images}")
    images: list[ImageUpload] = []
    for upload in uploads:
        check_media_type(upload, allowed=IMAGE_MEDIA_TYPES, what="image")
        images.append(ImageUpload(data=await upload.read(), filename=upload.filename))
    return images
