"""The hot-swap holder: which transformer serves requests in this process.

A swap builds and validates the new ONNX session off to the side, then publishes an immutable
:class:`ActiveTransformer` with one reference assignment. A request reads ``holder.current()``
ONCE and uses that snapshot to the end, so in-flight requests finish on the version they
started with. Every worker polls ``registry_state.generation`` (a :class:`Poller` started by the
app's lifespan, never at import) and swaps when it moves, so workers and replicas converge.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import REGISTRY_STATE_ID, RegistryState, TransformerVersion

if TYPE_CHECKING:
    from service.inference.transformer import TransformerSession
    from service.settings import ServiceSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveTransformer:
    """One immutable snapshot: the version, its session and its decision threshold."""

    version: str | None
    session: TransformerSession | None
    threshold: float | None
    generation: int
    sha256: str | None = None
    source_model: str | None = None
    target_model: str | None = None

    @property
    def ready(self) -> bool:
        return self.session is not None


NO_TRANSFORMER = ActiveTransformer(version=None, session=None, threshold=None, generation=-1)


class ActiveTransformerHolder:
    """Holds the current :class:`ActiveTransformer`; ``refresh`` follows the database."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        settings: ServiceSettings,
        loader: Callable[..., TransformerSession] | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._settings = settings
        self._loader = loader
        self._current: ActiveTransformer = NO_TRANSFORMER
        self._refresh_lock = threading.Lock()  # one swap at a time; readers never wait
        self.last_error: str | None = None
        self._poller: Poller | None = None

    def current(self) -> ActiveTransformer:
        """The snapshot to use for one whole request (a single attribute read)."""
        return self._current

    def _load(self, path: Any) -> TransformerSession:
        if self._loader is not None:
            return self._loader(path)
        from service.registry.store import load_transformer_session

        return load_transformer_session(path, settings=self._settings)

    def refresh(self) -> bool:
        """Follow the database: swap when the generation moved. Returns True on a swap.

        A version that fails to load keeps the previous snapshot and sets ``last_error``
        (the generation is remembered so the failure is logged once, not every poll).
        """
        with self._refresh_lock:
            with self._session_factory() as session:
                state = session.get(RegistryState, REGISTRY_STATE_ID)
                generation = int(state.generation) if state is not None else 0
                current = self._current
                if generation == current.generation:
                    return False
                row = session.scalars(
                    select(TransformerVersion).where(TransformerVersion.state == "active")
                ).first()
                facts = None
                if row is not None:
                    facts = (row.version, row.file_name, row.threshold, row.sha256)
                    models = (row.source_model, row.target_model)
            if facts is None:
                snapshot = ActiveTransformer(
                    version=None, session=None, threshold=None, generation=generation
                )
            elif facts[0] == current.version and current.session is not None:
                # Same version (e.g. gallery-only change of generation): keep the session.
                snapshot = ActiveTransformer(
                    version=current.version,
                    session=current.session,
                    threshold=facts[2],
                    generation=generation,
                    sha256=current.sha256,
                    source_model=current.source_model,
                    target_model=current.target_model,
                )
            else:
                version, file_name, threshold, sha256 = facts
                path = self._settings.transformers_path / file_name
                try:
                    built = self._load(path)  # off to the side: requests still use `current`
                    if getattr(built, "sha256", sha256) != sha256:
                        raise ValueError(f"file {path} does not match sha256 of {version}")
                    _warn_if_uncalibrated(version, built)
                except Exception as exc:
                    self.last_error = f"cannot load transformer {version}: {exc}"
                    log.error("%s; keeping %s", self.last_error, current.version)
                    self._current = _with_generation(current, generation)
                    return False
                snapshot = ActiveTransformer(
                    version=version,
                    session=built,
                    threshold=threshold,
                    generation=generation,
                    sha256=sha256,
                    source_model=models[0],
                    target_model=models[1],
                )
            self.last_error = None
            swapped = snapshot.version != current.version
            self._current = snapshot  # THE publication: one reference assignment
            if swapped:
                log.info(
                    "transformer %s -> %s (generation %d)",
                    current.version,
                    snapshot.version,
                    generation,
                )
            return swapped

    def start_polling(self) -> None:
        """Poll the generation every ``generation_poll_seconds`` in a daemon thread."""
        if self._poller is None:
            self._poller = Poller(
                interval_seconds=self._settings.generation_poll_seconds,
                tasks=[self.refresh],
                name="facebridge-transformer-poller",
            )
            self._poller.start()

    def stop_polling(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None


def _warn_if_uncalibrated(version: str, session: object) -> None:
    """Once per loaded version (a swap loads it once): an older file has no open-set
    calibration, so identify falls back to a 1:1 threshold (docs/service.md)."""
    metadata = getattr(session, "metadata", None)
    if metadata is not None and not getattr(metadata, "calibrations", ()):
        log.warning(
            "transformer %s carries no open-set calibration (facebridge.calibration): identify "
            "falls back to its 1:1 threshold, which does not follow the gallery size; refit it "
            "with `facebridge transformer fit` for FACEBRIDGE_TARGET_FPIR to apply",
            version,
        )


def _with_generation(snapshot: ActiveTransformer, generation: int) -> ActiveTransformer:
    return ActiveTransformer(
        version=snapshot.version,
        session=snapshot.session,
        threshold=snapshot.threshold,
        generation=generation,
        sha256=snapshot.sha256,
        source_model=snapshot.source_model,
        target_model=snapshot.target_model,
    )


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
    ) -> None:
        self.interval_seconds = float(interval_seconds)
        self.tasks = list(tasks)
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
        while not self._stop.wait(self.interval_seconds):
            for task in self.tasks:
                try:
                    task()
                except Exception:
                    log.exception("poller task %s failed", getattr(task, "__name__", task))
