"""A labelled image folder for training: ``root/<identity>/<image>``, class ids by sorted name.

Torch-free: listing is ``training.data.samples.list_image_folder``'s, decoding is
``service.inference.images``'s; this adds the class filter and byte access a training set needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.errors import ContractError
from training.data.samples import list_image_folder


@dataclass(frozen=True)
class ImageFolder:
    root: Path
    classes: tuple[str, ...]
    samples: tuple[tuple[Path, int], ...]  # (file, class id), sorted by class then file name

    @classmethod
    def scan(cls, root: str | Path, *, min_images_per_class: int = 1) -> ImageFolder:
        """List ``root/<identity>/<image>``; identities with fewer images are left out."""
        base = Path(root)
        by_identity: dict[str, list[Path]] = {}
        for record in list_image_folder(base):
            by_identity.setdefault(record.identity, []).append(base / record.relpath)
        kept = [name for name, files in by_identity.items() if len(files) >= min_images_per_class]
        if len(kept) < 2:
            raise ContractError(
                f"{base}: expected root/<identity>/<image> with at least 2 identities having "
                f">= {min_images_per_class} image(s); found {len(kept)}"
            )
        samples = tuple((f, label) for label, name in enumerate(kept) for f in by_identity[name])
        return cls(root=base, classes=tuple(kept), samples=samples)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[bytes, int]:
        """(encoded image bytes, class id) of the i-th image."""
        path, label = self.samples[i]
        try:
            return path.read_bytes(), label
        except OSError as exc:
            raise ContractError(f"{path}: cannot read ({exc.strerror or exc})") from exc
