"""Read the arrays of an ``.npz`` archive row block by row block, never whole: a 1M-row gallery
import stays at a flat memory (``np.load`` would expand every member at once). Members stored
or deflated alike; object arrays (pickles) and Fortran order are refused."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

import numpy as np

from service.errors import ContractError


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
        for name in self.names:
            with self._zip.open(f"{name}.npy") as fh:
                shape, dtype = _header(fh, name)
            self.shapes[name], self.dtypes[name] = shape, dtype

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
