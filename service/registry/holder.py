"""The hot-swap holder: which transformer serves requests in this process.

A swap builds and validates the new transformer runner off to the side, then publishes an immutable
:class:`ActiveTransformer` with one reference assignment. A request reads ``holder.current()``
ONCE and uses that snapshot to the end, so in-flight requests finish on the version they
started with. Every worker polls ``registry_state.generation`` (a
:class:`service.threads.Poller` started by the app's lifespan, never at import) and swaps when
it moves, so workers and replicas converge.
A version this process cannot serve (its file, or a backbone or gallery it does not fit) is
retried with backoff and reported by :meth:`ActiveTransformerHolder.status` (``/readyz``,
metrics) instead of being forgotten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import TransformerVersion
from service.db.registry_state import registry_state
from service.errors import ContractError
from service.gallery.store import gallery_dim, gallery_model_id
from service.threads import Poller

if TYPE_CHECKING:
    from service.inference.transformer import TransformerRunner
    from service.registry.records import BackboneFacts
    from service.settings import ServiceSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveTransformer:
    """One immutable snapshot: the version, its runner and its decision threshold."""

    version: str | None
    runner: TransformerRunner | None
    threshold: float | None
    generation: int
    sha256: str | None = None
    source_model: str | None = None
    target_model: str | None = None

    @property
    def ready(self) -> bool:
        return self.runner is not None


NO_TRANSFORMER = ActiveTransformer(version=None, runner=None, threshold=None, generation=-1)


@dataclass(frozen=True)
class HolderStatus:
    """What this process serves versus what the database says is active."""

    served_version: str | None
    expected_version: str | None  # active in the database but not served here (None: in sync)
    last_error: str | None
    failures: int  # consecutive failed loads of ``expected_version``
    retry_in_seconds: float | None

    @property
    def in_sync(self) -> bool:
        return self.expected_version is None


@dataclass
class _FailedLoad:
    generation: int
    version: str
    attempts: int
    retry_at: float


RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0


class ActiveTransformerHolder:
    """Holds the current :class:`ActiveTransformer`; ``refresh`` follows the database.

    A version that cannot be served here (file missing or corrupt, or not fitting the running
    backbone and gallery: ``serving``) is retried with exponential backoff (1 s doubling up to
    60 s) while the previous snapshot keeps serving; :meth:`status` says which version is
    served, which one the database expects, and why they differ.
    """

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        settings: ServiceSettings,
        loader: Callable[..., TransformerRunner] | None = None,
        serving: BackboneFacts | None = None,
        on_load_error: Callable[[str], None] | None = None,
        thread_initializer: Callable[[], None] | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._settings = settings
        self._loader = loader
        self._serving = serving
        self._on_load_error = on_load_error or (lambda message: None)
        self._thread_initializer = thread_initializer
        self._current: ActiveTransformer = NO_TRANSFORMER
        self._refresh_lock = threading.Lock()  # one swap at a time; readers never wait
        self.last_error: str | None = None
        self._failed: _FailedLoad | None = None
        self._poller: Poller | None = None

    def current(self) -> ActiveTransformer:
        """The snapshot to use for one whole request (a single attribute read)."""
        return self._current

    def status(self) -> HolderStatus:
        failed, now = self._failed, time.monotonic()
        return HolderStatus(
            served_version=self._current.version,
            expected_version=None if failed is None else failed.version,
            last_error=self.last_error if failed is not None else None,
            failures=0 if failed is None else failed.attempts,
            retry_in_seconds=None if failed is None else max(0.0, failed.retry_at - now),
        )

    def _load(self, path: Any) -> TransformerRunner:
        if self._loader is not None:
            return self._loader(path)
        from service.registry.validation import load_transformer_runner

        return load_transformer_runner(path, settings=self._settings)

    def refresh(self) -> bool:
        """Follow the database: swap when the generation moved. Returns True on a swap.

        A version that fails to load (or does not fit this process's backbone and gallery)
        keeps the previous snapshot, sets ``last_error`` and is retried with backoff.
        """
        with self._refresh_lock:
            with self._session_factory() as session:
                generation = registry_state(session=session).generation
                current, failed = self._current, self._failed
                if generation == current.generation and failed is None:
                    return False
                retry_later = failed is not None and time.monotonic() < failed.retry_at
                if retry_later and failed.generation == generation:  # type: ignore[union-attr]
                    return False
                row = session.scalars(
                    select(TransformerVersion).where(TransformerVersion.state == "active")
                ).first()
                facts = None
                if row is not None:
                    facts = (row.version, row.file_name, row.threshold, row.sha256)
                    models = (row.source_model, row.target_model)
                    gallery = (
                        gallery_dim(session=session, settings=self._settings),
                        gallery_model_id(session=session, settings=self._settings),
                    )
            if facts is None:
                snapshot = ActiveTransformer(
                    version=None, runner=None, threshold=None, generation=generation
                )
            elif facts[0] == current.version and current.runner is not None:
                # Same version (e.g. gallery-only change of generation): keep the runner.
                snapshot = replace(current, threshold=facts[2], generation=generation)
            else:
                version, file_name, threshold, sha256 = facts
                try:
                    built = self._build(version, file_name, sha256, gallery)
                    _warn_if_uncalibrated(version, built)
                except Exception as exc:
                    self._record_failure(generation, version, f"{exc}")
                    return False
                snapshot = ActiveTransformer(
                    version=version,
                    runner=built,
                    threshold=threshold,
                    generation=generation,
                    sha256=sha256,
                    source_model=models[0],
                    target_model=models[1],
                )
            self.last_error, self._failed = None, None
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

    def _build(
        self, version: str, file_name: str, sha256: str, gallery: tuple[int | None, str | None]
    ) -> TransformerRunner:
        """Load the version's file off to the side and check it fits what runs here."""
        path = self._settings.transformers_path / file_name
        built = self._load(path)  # requests still use `current` meanwhile
        if getattr(built, "sha256", sha256) != sha256:
            raise ContractError(f"file {path} does not match the sha256 of {version}")
        if self._serving is not None:
            from service.registry.validation import check_fits

            check_fits(
                built,
                backbone=self._serving,
                gallery_dim=gallery[0],
                gallery_model=gallery[1],
            )
        return built

    def _record_failure(self, generation: int, version: str, reason: str) -> None:
        previous = self._failed
        attempts = 1
        if previous is not None and previous.version == version:
            attempts = previous.attempts + 1
        delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** (attempts - 1))
        message = f"cannot serve transformer {version}: {reason}"
        if message != self.last_error:  # once per distinct reason, not every retry
            log.error("%s; still serving %s; retrying with backoff", message, self._current.version)
        self.last_error = message
        self._failed = _FailedLoad(generation, version, attempts, time.monotonic() + delay)
        self._on_load_error(message)

    def start_polling(self) -> None:
        """Poll the generation every ``generation_poll_seconds`` in a daemon thread."""
        if self._poller is None:
            self._poller = Poller(
                interval_seconds=self._settings.generation_poll_seconds,
                tasks=[self.refresh],
                name="facebridge-transformer-poller",
                thread_initializer=self._thread_initializer,
            )
            self._poller.start()

    def stop_polling(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None


def _warn_if_uncalibrated(version: str, runner: object) -> None:
    """Once per loaded version (a swap loads it once): an older file has no open-set
    calibration, so identify falls back to a 1:1 threshold (docs/service.md)."""
    metadata = getattr(runner, "metadata", None)
    if metadata is not None and not getattr(metadata, "calibrations", ()):
        log.warning(
            "transformer %s carries no open-set calibration (facebridge.calibration): identify "
            "falls back to its 1:1 threshold, which does not follow the gallery size; refit it "
            "with `facebridge transformer fit` for FACEBRIDGE_TARGET_FPIR to apply",
            version,
        )
