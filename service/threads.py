"""Thread counts fixed for the whole process at start, not per thread.

OpenMP keeps its thread count per calling thread: ``omp_set_num_threads`` in the event loop's
thread leaves every other thread (the pollers, Starlette's worker threads for sync routes, the
start-up thread) at one thread per core. The OpenMP runtime that FAISS loads reads
``OMP_NUM_THREADS`` once, when it is loaded, and every thread then starts from that value: so
the service sets it before FAISS is first imported (the lifespan does, before anything loads
FAISS), and also sets the count in each thread it starts itself, in case FAISS was loaded
earlier in the process (tests, an embedding application).

:class:`Poller` is the one background-thread loop (the transformer holder's refresh, the
gallery sync, the shadow runs), each thread started with those counts.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

OMP_ENV = "OMP_NUM_THREADS"


def configure_faiss_threads(threads: int) -> bool:
    """Make ``threads`` the FAISS/OpenMP thread count of every thread of this process.

    Returns True when that holds process-wide (FAISS not loaded yet, or already loaded with
    ``OMP_NUM_THREADS`` at this value); False when only the threads that call
    :func:`service.gallery.store.set_faiss_threads` get it.
    """
    from service.gallery.store import set_faiss_threads

    wanted = str(max(1, int(threads)))
    already_loaded = "faiss" in sys.modules
    process_wide = os.environ.get(OMP_ENV) == wanted or not already_loaded
    if not already_loaded:
        os.environ[OMP_ENV] = wanted  # read by the OpenMP runtime when FAISS loads it
    elif not process_wide:
        log.info("FAISS was loaded before the service started: OpenMP threads set per thread")
    set_faiss_threads(int(wanted))
    return process_wide


class Poller:
    """Runs ``tasks`` every ``interval_seconds`` in one daemon thread until ``stop``.

    A task that raises is logged and retried at the next tick; the thread never dies of it.
    """

    def __init__(
        self,
        *,
        interval_seconds: float,
        tasks: Sequence[Callable[[], object]],
        name: str = "facebridge-poller",
        thread_initializer: Callable[[], None] | None = None,
    ) -> None:
        self.interval_seconds = float(interval_seconds)
        self.tasks = list(tasks)
        self._thread_initializer = thread_initializer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        if self._thread_initializer is not None:
            self._thread_initializer()
        while not self._stop.wait(self.interval_seconds):
            for task in self.tasks:
                try:
                    task()
                except Exception:
                    log.exception("poller task %s failed", getattr(task, "__name__", task))
