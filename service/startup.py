"""Start-up in the background, so the server binds (and ``/healthz`` answers) at once.

The lifespan runs the quick configuration checks itself (a broken manifest still stops the
process) and hands the slow part (migrations, ONNX sessions, the FAISS rebuild, pollers) to
:class:`Startup`, which runs it in one thread and says what it is doing. Until it is done,
``/readyz`` answers 503 naming the step and the data routes 503 with the same reason; a failed
start-up is kept (``error``), undone, and reported by ``/healthz`` (503), so a liveness probe
restarts the process rather than waiting forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from service.settings import ServiceSettings

log = logging.getLogger("facebridge.startup")

T = TypeVar("T")


class StartupCancelled(Exception):
    """The server stopped while starting up: the remaining steps are skipped."""


class Startup(Generic[T]):
    """Runs ``build(stack, step)`` in a thread. ``build`` calls ``step("what")`` before each
    part; ``stack`` collects the clean-ups, run in reverse by :meth:`stop` (or at once when the
    build fails). ``on_ready(result)`` publishes the result."""

    def __init__(
        self,
        *,
        build: Callable[[ExitStack, Callable[[str], None]], T],
        on_ready: Callable[[T], None],
    ) -> None:
        self._build = build
        self._on_ready = on_ready
        self._stack = ExitStack()
        self._cancel = threading.Event()
        self._started = time.monotonic()
        self._step_started = self._started
        self.step = "waiting to start"
        self.result: T | None = None
        self.error: str | None = None
        self.exception: BaseException | None = None
        self.stopping = False
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="facebridge-startup", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _set_step(self, step: str) -> None:
        if self._cancel.is_set():
            raise StartupCancelled(f"stopped while {self.step}")
        log.info("start-up: %s", step)
        self.step, self._step_started = step, time.monotonic()

    def _run(self) -> None:
        try:
            result = self._build(self._stack, self._set_step)
        except BaseException as exc:  # kept for /readyz and wait(); the process stays up
            self._stack.close()
            self.exception = exc
            if not isinstance(exc, StartupCancelled):
                self.error = f"{self.step}: {exc}" if str(exc) else f"{self.step}: {exc!r}"
                log.error("start-up failed while %s", self.step, exc_info=exc)
        else:
            self.result = result
            self._on_ready(result)
            log.info("start-up done in %.1f s", time.monotonic() - self._started)
        finally:
            self.done.set()

    def describe(self) -> str:
        """What the start-up is doing, e.g. ``opening the gallery index (3.2 s; 5.1 s in all)``."""
        now = time.monotonic()
        return f"{self.step} ({now - self._step_started:.1f} s; {now - self._started:.1f} s in all)"

    def wait(self, timeout: float) -> T:
        """Block until the start-up is done; its result, or its exception re-raised."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"start-up not done after {timeout} s: {self.describe()}")
        if self.exception is not None:
            raise self.exception
        assert self.result is not None
        return self.result

    def stop(self) -> None:
        """Skip the remaining steps, wait for the current one, undo everything in reverse."""
        self.stopping = True
        self._cancel.set()
        if self._thread.is_alive():
            self._thread.join()
        self._stack.close()


def preflight(settings: ServiceSettings) -> None:
    """The configuration checks that fail at once, before the server binds: a manifest that
    does not parse or names no file, CUDA required where ONNX Runtime has none."""
    from service.contracts import load_backbone_manifest
    from service.errors import ServiceUnavailable

    if settings.backbone_manifest is not None:
        load_backbone_manifest(settings.backbone_manifest)
    if settings.require_cuda:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise ServiceUnavailable(
                f"FACEBRIDGE_REQUIRE_CUDA is set but ONNX Runtime offers only {available}"
            )


def wait_until_started(app: Any, *, timeout: float = 60.0) -> Any:
    """Block until the background start-up of ``app`` (its lifespan running) is done; its
    state, or the start-up's exception re-raised. For in-process use (tests, the demo):
    ``with TestClient(app) as client: wait_until_started(app)``."""
    startup: Startup[Any] | None = getattr(app.state, "facebridge_startup", None)
    if startup is None:
        raise RuntimeError("the app's lifespan is not running (use `with TestClient(app)`)")
    return startup.wait(timeout)
