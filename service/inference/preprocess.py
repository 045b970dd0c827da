"""Aligned uint8 RGB crops -> the float32 tensor a backbone wants, driven by its manifest."""

from __future__ import annotations

import numpy as np
from PIL import Image

from service.contracts import BackboneManifest
from service.errors import ImageError


def _per_channel(value: float | tuple[float, float, float]) -> np.ndarray:
    return np.asarray(value, dtype=np.float32).reshape(-1)


def resize_crops(crops: np.ndarray, *, size: tuple[int, int]) -> np.ndarray:
    """Resize [N, H, W, 3] uint8 crops to ``size`` = (height, width) (bilinear) when needed."""
    height, width = size
    if crops.shape[1:3] == (height, width):
        return crops
    resized = [
        np.asarray(Image.fromarray(c).resize((width, height), Image.Resampling.BILINEAR))
        for c in crops
    ]
    return np.stack(resized) if resized else np.empty((0, height, width, 3), np.uint8)


def preprocess(crops: np.ndarray, *, manifest: BackboneManifest) -> np.ndarray:
    """[N, H, W, 3] uint8 RGB -> float32 C-contiguous [N, C, H, W] or [N, H, W, C] per manifest.

    Colour order (RGB/BGR), (x - mean) / std (scalar or per channel, in the model's colour
    order) and size come from the manifest.
    """
    batch = np.asarray(crops)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[3] != 3:
        raise ImageError(f"expected [N, H, W, 3] crops, got shape {batch.shape}")
    if batch.dtype != np.uint8:
        raise ImageError(f"expected uint8 crops, got {batch.dtype}")
    batch = resize_crops(batch, size=tuple(manifest.input_size))
    if manifest.color == "BGR":
        batch = batch[..., ::-1]
    x = batch.astype(np.float32)
    x -= _per_channel(manifest.mean)
    x /= _per_channel(manifest.std)
    if manifest.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)
