"""Read the arrays of an ``.npz`` archive row block by row block, never whole: a 1M-row gallery
import stays at a flat memory (``np.load`` would expand every member at once). Members stored
or deflated alike; object arrays (pickles) and Fortran order are refused.

:meth:`NpzColumns.check_sizes` checks what the archive declares before a byte is inflated: each
member's ``.npy`` header (shape x dtype) against the zip directory's size, the archive's
expanded total and rows against :class:`ImportLimits`, vector and text widths: a 4 MB archive
whose ``old`` expands to 4 GB is refused, never allocated."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from service.errors import ContractError

if TYPE_CHECKING:
    from service.settings import ServiceSettings

MAX_VECTOR_DIM = 65536
MAX_TEXT_BYTES = 4 * 4096  # a text column's item: 4096 UCS-4 characters


@dataclass(frozen=True)
class ImportLimits:
    """What one import file may hold, checked from its headers before its data is read."""

    max_rows: int = 5_000_000
    max_expanded_bytes: int = 16 * 1024**3

    @classmethod
    def from_settings(cls, settings: ServiceSettings | None) -> ImportLimits:
        if settings is None:
            return cls()
        return cls(settings.max_import_rows, settings.max_import_expanded_bytes)

    def check_rows(self, rows: int) -> None:
        if rows > self.max_rows:
            raise ContractError(
                f"the file has more than {self.max_rows} rows (FACEBRIDGE_MAX_IMPORT_ROWS)"
            )

    def check_expanded(self, total: int, *, what: str) -> None:
        if total > self.max_expanded_bytes:
            raise ContractError(
                f"{what} expands to {total} bytes; the limit is {self.max_expanded_bytes} "
                "(FACEBRIDGE_MAX_IMPORT_EXPANDED_BYTES)"
            )


class NpzColumns:
    """The named 1-D / 2-D arrays of an archive, read together in blocks of rows."""

    def __init__(self, source: Path | BinaryIO, names: tuple[str, ...]) -> None:
        try:
            self._zip = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ContractError(f"not a readable .npz file ({type(exc).__name__})") from exc
        self.files = sorted(n[:-4] for n in self._zip.namelist() if n.endswith(".npy"))
        self.names = tuple(n for n in names if n in self.files)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self._header_bytes: dict[str, int] = {}
        for name in self.names:
            with self._zip.open(f"{name}.npy") as fh:
                shape, dtype = _header(fh, name)
                self._header_bytes[name] = fh.tell()
            self.shapes[name], self.dtypes[name] = shape, dtype

    def check_sizes(self, limits: ImportLimits) -> None:
        """ContractError unless every read member holds what its header declares, the archive
        expands to at most ``limits.max_expanded_bytes``, and widths are sane (headers only)."""
        total = sum(info.file_size for info in self._zip.infolist())
        limits.check_expanded(total, what="the archive")
        for name in self.names:
            shape, dtype = self.shapes[name], self.dtypes[name]
            declared = (
                self._header_bytes[name] + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            )
            stored = self._zip.getinfo(f"{name}.npy").file_size
            if stored != declared:
                raise ContractError(
                    f"'{name}' declares {shape} {dtype} ({declared} bytes) but its zip entry "
                    f"holds {stored} bytes: a malformed or tampered archive"
                )
            if len(shape) == 2 and not 0 < shape[1] <= MAX_VECTOR_DIM:
                raise ContractError(
                    f"'{name}' has dimension {shape[1]}; expected 1..{MAX_VECTOR_DIM}"
                )
            if len(shape) == 1 and dtype.itemsize > MAX_TEXT_BYTES:
                raise ContractError(f"'{name}' items are {dtype}: too wide for a name or id")

    def blocks(self, rows: int) -> Iterator[dict[str, np.ndarray]]:
        """{name: rows [start, start + rows) of that array} until the first array ends."""
        with ExitStack() as stack:
            handles = {}
            for name in self.names:
                fh = stack.enter_context(self._zip.open(f"{name}.npy"))
                _header(fh, name)
                handles[name] = fh
            total = min((self.shapes[n][0] for n in self.names), default=0)
            for start in range(0, total, rows):
                count = min(rows, total - start)
                yield {name: self._read(fh, name, count) for name, fh in handles.items()}

    def _read(self, fh: BinaryIO, name: str, count: int) -> np.ndarray:
        dtype, shape = self.dtypes[name], self.shapes[name]
        per_row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        data = fh.read(count * per_row * dtype.itemsize)
        if len(data) != count * per_row * dtype.itemsize:
            raise ContractError(f".npz array '{name}' is truncated")
        return np.frombuffer(data, dtype=dtype).reshape((count, *shape[1:]))

    def close(self) -> None:
        self._zip.close()


def _header(fh: BinaryIO, name: str) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(fh)
    except (ValueError, OSError) as exc:
        raise ContractError(f".npz array '{name}' unreadable ({exc})") from exc
    if dtype.hasobject:
        raise ContractError(f".npz array '{name}' holds Python objects (pickles are refused)")
    if fortran and len(shape) > 1:
        raise ContractError(f".npz array '{name}' is in Fortran order: save it C-contiguous")
    return tuple(int(d) for d in shape), dtype
