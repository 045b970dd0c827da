"""The readers-writer lock the embedded FAISS store uses."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteLock:
    """Many concurrent readers (searches) or one writer (add/remove/save). Writers take
    precedence, so a steady stream of searches cannot starve an enrolment."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writers_waiting = 0
        self._writer: int | None = None
        self._writer_depth = 0
        self._reading = _Reading(self)

    def read(self) -> _Reading:
        """``with lock.read():`` a shared hold (re-entrant inside this thread's own write)."""
        return self._reading  # one stateless object: the counts live in the lock

    def _acquire_read(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._writer != me:  # a writer may search inside its own critical section
                while self._writer is not None or self._writers_waiting:
                    self._cond.wait()
            self._readers += 1

    def _release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0 and self._writers_waiting:  # only writers wait for readers
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._writer_depth += 1
            else:
                self._writers_waiting += 1
                try:
                    while self._writer is not None or self._readers > 0:
                        self._cond.wait()
                finally:
                    self._writers_waiting -= 1
                self._writer, self._writer_depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._writer_depth -= 1
                if self._writer_depth == 0:
                    self._writer = None
                    self._cond.notify_all()


class _Reading:
    """The context manager :meth:`ReadWriteLock.read` returns (a class, not a generator: a
    search takes it once per call, and @contextmanager costs several microseconds more)."""

    __slots__ = ("_lock",)

    def __init__(self, lock: ReadWriteLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        self._lock._acquire_read()

    def __exit__(self, *exc: object) -> None:
        self._lock._release_read()
