"""Locks that serialise writers across threads, workers and replicas, on SQLite and Postgres.

- :func:`lock_registry_state`: the ``registry_state`` row's write lock, taken FIRST in a
  transaction that reads and changes registry state (activation, deletion, rollback). Postgres:
  a no-op UPDATE locks the row until commit; SQLite: the same UPDATE is the transaction's first
  write, which takes the database's write lock (waiting up to the busy timeout). Everything the
  transaction reads afterwards is current.
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

from sqlalchemy import text, update
from sqlalchemy.orm import Session

from service.db.models import REGISTRY_STATE_ID, RegistryState

_memory_locks: dict[str, threading.Lock] = {}
_memory_guard = threading.Lock()


def lock_registry_state(session: Session) -> None:
    """Hold the registry_state row's write lock until the session's transaction ends."""
    result = session.execute(
        update(RegistryState)
        .where(RegistryState.id == REGISTRY_STATE_ID)
        .values(generation=RegistryState.generation)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]  # a database that lacks the row
        session.add(RegistryState(id=REGISTRY_STATE_ID, generation=0))
        session.flush()


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
