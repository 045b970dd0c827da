"""InsightFace face sets on RecordIO (:mod:`training.data.recordio`): the header record, the
per-class key ranges and the ``property`` file (layout: that module's docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from service.errors import ContractError, InvalidInput
from training.data.recordio import (
    IRHeader,
    RecordIOReader,
    RecordIOWriter,
    pack_payload,
    unpack_payload,
)


@dataclass(frozen=True)
class Property:
    num_classes: int
    height: int
    width: int


def read_property(path: str | Path) -> Property:
    text = Path(path).read_text().strip()
    try:
        n, h, w = (int(x) for x in text.split(","))
    except ValueError as exc:
        raise ContractError(f"{path}: expected 'num_classes,height,width', got {text!r}") from exc
    return Property(num_classes=n, height=h, width=w)


def record_dir_files(path: str | Path) -> tuple[Path, Path, Path]:
    """(rec, idx, property) for a directory or a ``.rec`` path; the idx must exist."""
    p = Path(path)
    rec = p / "train.rec" if p.is_dir() else p
    idx = rec.with_suffix(".idx")
    prop = rec.parent / "property"
    for needed in (rec, idx):
        if not needed.is_file():
            raise ContractError(f"RecordIO set: {needed} not found")
    return rec, idx, prop


def is_record_set(path: str | Path) -> bool:
    p = Path(path)
    if p.is_dir():
        return (p / "train.rec").is_file()
    return p.suffix == ".rec" and p.is_file()


class InsightFaceRecordSet:
    """Labelled encoded images of an InsightFace ``train.rec`` (decoded elsewhere)."""

    def __init__(self, path: str | Path) -> None:
        rec, idx, prop = record_dir_files(path)
        self.reader = RecordIOReader(rec, idx)
        if not self.reader.index:
            raise ContractError(f"{idx}: the index is empty")
        header0: IRHeader | None = None
        if 0 in self.reader.index:
            header0, _ = unpack_payload(self.reader.read_key(0))
        if header0 is not None and header0.flag > 0:
            first_identity, end = (int(v) for v in header0.labels[:2])
            self.image_keys = list(range(1, first_identity))
            self.identity_ranges = {
                cls: tuple(int(v) for v in unpack_payload(self.reader.read_key(key))[0].labels[:2])
                for cls, key in enumerate(range(first_identity, end))
            }
        else:
            self.image_keys = self.reader.keys
            self.identity_ranges = {}
        missing = [k for k in self.image_keys if k not in self.reader.index]
        if missing:
            raise ContractError(f"{idx}: {len(missing)} image key(s) missing, e.g. {missing[0]}")
        self.property = read_property(prop) if prop.is_file() else None

    @property
    def num_classes(self) -> int:
        if self.property is not None:
            return self.property.num_classes
        if self.identity_ranges:
            return len(self.identity_ranges)
        return int(max(self.label_of(k) for k in self.image_keys)) + 1

    def __len__(self) -> int:
        return len(self.image_keys)

    def label_of(self, key: int) -> int:
        header, _ = unpack_payload(self.reader.read_key(key))
        return int(header.labels[0])

    def __getitem__(self, i: int) -> tuple[bytes, int]:
        """(encoded image bytes, class id) of the i-th image."""
        header, image = unpack_payload(self.reader.read_key(self.image_keys[i]))
        return image, int(header.labels[0])


def write_record_set(
    directory: str | Path,
    samples: Sequence[tuple[bytes, int]],
    *,
    image_size: tuple[int, int] = (112, 112),
) -> Path:
    """Write ``(encoded image, class id)`` samples as an InsightFace set with the header record.

    Images are grouped by class (the layout the identity ranges need). The index is written
    with key 0 last, as InsightFace's tools do. Returns the directory.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    order = sorted(range(len(samples)), key=lambda i: samples[i][1])
    classes = sorted({label for _, label in samples})
    if classes != list(range(len(classes))):
        raise InvalidInput("class ids must be 0 .. num_classes-1 without gaps")
    first_identity = len(samples) + 1
    end = first_identity + len(classes)
    ranges: dict[int, list[int]] = {}
    with RecordIOWriter(out / "train.rec", out / "train.idx") as writer:
        # Record 0 first in the file; its index line is written last.
        header_offset = writer.write(pack_payload(b"", label=[first_identity, end]))
        for key, i in enumerate(order, start=1):
            image, label = samples[i]
            writer.write(pack_payload(image, label=float(label), id=key), key=key)
            ranges.setdefault(label, [key, key + 1])[1] = key + 1
        for cls in classes:
            writer.write(pack_payload(b"", label=ranges[cls]), key=first_identity + cls)
        writer.add_index(0, header_offset)
    (out / "property").write_text(f"{len(classes)},{image_size[0]},{image_size[1]}\n")
    return out
