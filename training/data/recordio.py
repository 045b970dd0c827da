"""InsightFace RecordIO (``train.rec`` + ``train.idx`` + ``property``) without mxnet.

Binary layout (dmlc-core ``recordio``), all little-endian:

- each record part: magic ``0xCED7230A`` (u32), ``lrec`` (u32) = ``(cflag << 29) | length``,
  ``length`` data bytes, zero padding to a multiple of 4;
- ``cflag`` 0 = a whole record, 1 = first, 2 = middle, 3 = last part. The writer splits a payload
  wherever the magic occurs at a 4-byte-aligned offset inside it (so a scanning reader never
  mistakes payload bytes for a record start) and drops those 4 bytes; the reader puts them back.

``train.idx``: text lines ``key<TAB>offset`` (not necessarily sorted).

Payload (``mx.recordio.pack``): header ``<IfQQ`` = (flag, label, id, id2), 24 bytes; if
``flag > 0`` then ``flag`` float32 labels follow and replace ``label``; then the encoded image.

InsightFace face sets: record 0 is a header whose labels are ``[first_identity_key, end_key]``;
keys ``1 .. first_identity_key - 1`` are images labelled with their class id; keys
``first_identity_key .. end_key - 1`` hold, per class, the image key range ``[start, end)``.
``property`` holds ``num_classes,height,width``. Sets without the header record (flag 0 on
record 0) are read as a plain list of labelled images.

Pure Python + NumPy: no torch, so this module is usable from any side.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from service.errors import ContractError, InvalidInput

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
CFLAG_WHOLE, CFLAG_FIRST, CFLAG_MIDDLE, CFLAG_LAST = 0, 1, 2, 3
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24


# ---------------------------------------------------------------------------------------------
# Record payloads: IRHeader + bytes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IRHeader:
    """``flag`` > 0 means ``label`` is an array of ``flag`` float32 values."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int

    @property
    def labels(self) -> np.ndarray:
        """The label(s) as a 1-D float32 array."""
        return np.atleast_1d(np.asarray(self.label, dtype=np.float32))


def pack_payload(
    data: bytes,
    *,
    label: float | Sequence[float] | np.ndarray,
    id: int = 0,
    id2: int = 0,
) -> bytes:
    """Header + data like ``mx.recordio.pack``: a scalar label inline, an array after the header."""
    if np.ndim(label) == 0:
        head = struct.pack(IR_FORMAT, 0, float(label), id, id2)
        return head + data
    values = np.asarray(label, dtype="<f4").ravel()
    head = struct.pack(IR_FORMAT, values.size, 0.0, id, id2)
    return head + values.tobytes() + data


def unpack_payload(payload: bytes) -> tuple[IRHeader, bytes]:
    """Inverse of :func:`pack_payload`."""
    if len(payload) < IR_SIZE:
        raise ContractError(f"RecordIO payload of {len(payload)} bytes is shorter than its header")
    flag, label, id_, id2 = struct.unpack_from(IR_FORMAT, payload)
    rest = payload[IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise ContractError(f"RecordIO payload announces {flag} labels but is too short")
        labels = np.frombuffer(rest, dtype="<f4", count=flag).astype(np.float32)
        return IRHeader(flag=flag, label=labels, id=id_, id2=id2), rest[4 * flag :]
    return IRHeader(flag=flag, label=float(label), id=id_, id2=id2), rest


# ---------------------------------------------------------------------------------------------
# Raw records
# ---------------------------------------------------------------------------------------------
def _padding(length: int) -> int:
    return (-length) % 4


def _split_at_magic(payload: bytes) -> list[bytes]:
    """Pieces between 4-byte-aligned occurrences of the magic (the magic bytes removed)."""
    pieces: list[bytes] = []
    start = 0
    pos = payload.find(_MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:
            pieces.append(payload[start:pos])
            start = pos + 4
            pos = payload.find(_MAGIC_BYTES, start)
        else:
            pos = payload.find(_MAGIC_BYTES, pos + 1)
    pieces.append(payload[start:])
    return pieces


class RecordIOWriter:
    """Appends records to ``rec_path`` and writes ``key<TAB>offset`` lines to ``idx_path``."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = None if idx_path is None else Path(idx_path)
        self._rec: BinaryIO = open(self.rec_path, "wb")  # noqa: SIM115 - closed in close()
        self._index: list[tuple[int, int]] = []

    def write(self, payload: bytes, *, key: int | None = None) -> int:
        """Write one record; returns its byte offset. ``key`` is recorded in the index file."""
        if len(payload) > _LENGTH_MASK:
            raise InvalidInput(f"RecordIO record of {len(payload)} bytes exceeds 2**29 - 1")
        offset = self._rec.tell()
        pieces = _split_at_magic(payload)
        for i, piece in enumerate(pieces):
            if len(pieces) == 1:
                cflag = CFLAG_WHOLE
            elif i == 0:
                cflag = CFLAG_FIRST
            elif i == len(pieces) - 1:
                cflag = CFLAG_LAST
            else:
                cflag = CFLAG_MIDDLE
            self._rec.write(_MAGIC_BYTES)
            self._rec.write(struct.pack("<I", (cflag << 29) | len(piece)))
            self._rec.write(piece)
            self._rec.write(b"\0" * _padding(len(piece)))
        if key is not None:
            self.add_index(key, offset)
        return offset

    def add_index(self, key: int, offset: int) -> None:
        """Add an index line (lets a caller choose the line order, e.g. key 0 last)."""
        self._index.append((key, offset))

    def close(self) -> None:
        if self._rec.closed:
            return
        self._rec.close()
        if self.idx_path is not None:
            lines = "".join(f"{key}\t{offset}\n" for key, offset in self._index)
            self.idx_path.write_text(lines)

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_index(idx_path: str | Path) -> dict[int, int]:
    """``key -> offset`` from a ``.idx`` file (any line order)."""
    index: dict[int, int] = {}
    for lineno, line in enumerate(Path(idx_path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        try:
            key, offset = int(parts[0]), int(parts[1])
        except (IndexError, ValueError) as exc:
            raise ContractError(f"{idx_path}:{lineno}: expected 'key<TAB>offset'") from exc
        index[key] = offset
    return index


class RecordIOReader:
    """Random access to records by key (``.idx``) or by offset; sequential iteration.

    The file is opened lazily (per process), so a reader can be handed to DataLoader workers.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise ContractError(f"RecordIO file not found: {self.rec_path}")
        self.index: dict[int, int] = {} if idx_path is None else read_index(idx_path)
        self._file: BinaryIO | None = None
        self._pid: int | None = None

    @property
    def keys(self) -> list[int]:
        return sorted(self.index)

    def _handle(self) -> BinaryIO:
        if self._file is None or self._pid != os.getpid():
            self._file = open(self.rec_path, "rb")  # noqa: SIM115 - closed in close()
            self._pid = os.getpid()
        return self._file

    def _read_part(self, f: BinaryIO) -> tuple[int, bytes] | None:
        head = f.read(8)
        if not head:
            return None
        if len(head) < 8:
            raise ContractError(f"{self.rec_path}: truncated record header at {f.tell()}")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise ContractError(
                f"{self.rec_path}: bad magic 0x{magic:08X} at offset {f.tell() - 8}"
            )
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        data = f.read(length)
        if len(data) < length:
            raise ContractError(f"{self.rec_path}: truncated record at offset {f.tell()}")
        f.seek(_padding(length), os.SEEK_CUR)
        return cflag, data

    def read_at(self, offset: int) -> bytes:
        """The (re-joined) payload of the record starting at ``offset``."""
        f = self._handle()
        f.seek(offset)
        payload = self._read_from(f)
        if payload is None:
            raise ContractError(f"{self.rec_path}: no record at offset {offset}")
        return payload

    def _read_from(self, f: BinaryIO) -> bytes | None:
        part = self._read_part(f)
        if part is None:
            return None
        cflag, data = part
        if cflag == CFLAG_WHOLE:
            return data
        if cflag != CFLAG_FIRST:
            raise ContractError(f"{self.rec_path}: record continues a previous one (cflag {cflag})")
        pieces = [data]
        while True:
            part = self._read_part(f)
            if part is None:
                raise ContractError(f"{self.rec_path}: multi-part record ends early")
            cflag, data = part
            if cflag not in (CFLAG_MIDDLE, CFLAG_LAST):
                raise ContractError(
                    f"{self.rec_path}: bad part flag {cflag} in a multi-part record"
                )
            pieces.append(data)
            if cflag == CFLAG_LAST:
                return _MAGIC_BYTES.join(pieces)

    def read_key(self, key: int) -> bytes:
        try:
            offset = self.index[key]
        except KeyError:
            raise ContractError(f"{self.rec_path}: key {key} is not in the index") from None
        return self.read_at(offset)

    def __iter__(self) -> Iterator[bytes]:
        """Every record in file order (needs no index)."""
        with open(self.rec_path, "rb") as f:
            while (payload := self._read_from(f)) is not None:
                yield payload

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_file"] = None  # file handles do not cross process boundaries
        state["_pid"] = None
        return state
