"""Locks that serialise writers across threads, workers and replicas, on SQLite and Postgres.

- the ``registry_state`` row's write lock is :func:`service.db.registry_state.lock_registry_state`.
- :func:`exclusive`: a named lock held for a block that may outlast SQLite's busy timeout (a
  long import): a transaction-level advisory lock on Postgres, a file lock beside the SQLite
  database (one machine: SQLite's own limit) -- both wait as long as it takes.
"""

from __future__ import annotations

import fcntl
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session

_memory_locks: dict[str, threading.Lock] = {}
_memory_guard = threading.Lock()


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def exclusive(session: Session, name: str) -> Iterator[None]:
    """Hold the lock ``name`` for the block (which must commit or roll back inside it)."""
    url = session.get_bind().url
    if url.get_backend_name() == "postgresql":
        # Released by the transaction's commit or rollback at the end of the block.
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _advisory_key(name)})
        yield
        return
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        with _memory_guard:
            lock = _memory_locks.setdefault(f"{database}:{name}", threading.Lock())
        with lock:
            yield
        return
    path = Path(database).expanduser().with_suffix(f".{name}.lock")
    with open(path, "a") as handle:  # a separate open file per holder: threads exclude too
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
