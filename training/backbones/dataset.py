"""What a backbone trains on: labelled encoded images (an image folder or an InsightFace
RecordIO set), decoded and preprocessed with the same manifest the export writes."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from service.contracts import BackboneManifest
from service.errors import InvalidInput
from service.inference.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_image
from service.inference.preprocess import preprocess
from training.data.imagefolder import ImageFolder
from training.data.record_set import InsightFaceRecordSet, is_record_set

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"


class LabelledImages(Protocol):
    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[bytes, int]: ...


def backbone_manifest(
    *, model_id: str, file: str, input_size: int, output_dim: int
) -> BackboneManifest:
    """How an iResNet is fed: the same object drives training input and the exported JSON."""
    return BackboneManifest(
        model_id=model_id,
        file=file,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        layout="NCHW",
        input_size=(input_size, input_size),
        color="RGB",
        mean=127.5,
        std=127.5,
        output_dim=output_dim,
        output_normalized=False,
    )


def open_training_data(path: str | Path, *, min_images_per_class: int = 1) -> LabelledImages:
    """An InsightFace RecordIO set (directory with ``train.rec`` or a ``.rec`` file) or a folder."""
    p = Path(path)
    if not p.exists():
        raise InvalidInput(f"training data not found: {p}")
    if is_record_set(p):
        return InsightFaceRecordSet(p)
    return ImageFolder.scan(p, min_images_per_class=min_images_per_class)


class FaceDataset(Dataset):
    """Encoded images -> (float32 [3, H, W] tensor, class id), with a random horizontal flip."""

    def __init__(self, source: LabelledImages, *, manifest: BackboneManifest, flip: float) -> None:
        self.source = source
        self.manifest = manifest
        self.flip = flip

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        data, label = self.source[i]
        image = decode_image(data, max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS)
        # torch's generator is seeded per DataLoader worker, so flips are reproducible.
        if self.flip > 0 and float(torch.rand(())) < self.flip:
            image = image[:, ::-1]
        x = preprocess(np.ascontiguousarray(image)[None], manifest=self.manifest)[0]
        return torch.from_numpy(x), int(label)
