"""Files written whole or not at all, and their checksums: the one place for both.

:func:`atomic_path` is the temp-file + ``os.replace`` pattern (a reader sees the old file or
the new one, never half of one); :func:`write_text_atomically` is it for a text file;
:func:`move_into_place` is its last step alone, for a temp file whose final name is known only
once it is written; :func:`file_sha256` hashes a file in chunks.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HASH_CHUNK = 1 << 20


def temp_path_for(path: Path) -> Path:
    """A private, hidden name beside ``path`` that keeps its suffix (``np.savez`` and the ONNX
    writers look at it): ``.<stem>.<pid>-<random>.tmp<suffix>``."""
    return path.with_name(f".{path.stem}.{os.getpid()}-{os.urandom(4).hex()}.tmp{path.suffix}")


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def move_into_place(tmp: str | Path, target: str | Path) -> None:
    """Give a finished temp file (written beside ``target``, fsynced by the caller when that
    matters) its final name in one step: for a name known only once the file is written (a
    content-addressed upload); otherwise use :func:`atomic_path`."""
    os.replace(tmp, target)


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path`` to write (and check); when the block ends without an
    error it replaces ``path`` in one step (after an fsync when ``fsync``). The temp file is
    removed either way; ``path``'s folder is created."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(target)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        move_into_place(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` to ``path`` whole or not at all; returns the path."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
