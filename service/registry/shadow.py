"""Shadow evaluation: a candidate transformer runs beside the active one on sampled live
identify traffic, off the request path, and never changes a reply.

On the request path (:meth:`ShadowEvaluator.offer`, called by the pipeline once a reply is
computed) a sampled reply costs one random draw and a non-blocking put of its query vectors
into a bounded queue; a full queue drops the sample (counted). One daemon thread drains the
queue: the candidate maps the SAME backbone vectors (the backbone, the expensive part, is not
run again), then the service's own search, scoring and decision rule run
(``Pipeline.rank_vectors``), and the two replies are compared (:mod:`shadow_stats`). The CPU
share is bounded by the sample rate, the queue size and that single thread (ONNX Runtime with
the service's intra-op thread count, FAISS with its OpenMP thread count).

Which run is going lives in SQL (:mod:`shadow_store`); every worker follows it from its poller
(:meth:`refresh`), loads the candidate's transformer runner off to the side and rewrites its own
results row at each poll.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import TransformerVersion
from service.errors import ContractError
from service.inference.transformer import read_metadata
from service.pipeline import ActiveMapping, IdentifyOutcome, IdentifyReply
from service.registry import shadow_store
from service.registry.records import version_row
from service.registry.shadow_stats import Decision, ShadowStats
from service.vectors import QUERIES_FLIP, QUERIES_PLAIN

if TYPE_CHECKING:
    from service.metrics import ServiceMetrics
    from service.settings import ServiceSettings

log = logging.getLogger(__name__)

RankFn = Callable[..., tuple[list[IdentifyOutcome], Any]]  # (outcomes, the decision rule)


def decisions(outcomes: list[IdentifyOutcome]) -> list[Decision]:
    """Per image: top-1 identity and score, and the identity the reply names as its match."""
    out = []
    for outcome in outcomes:
        top = outcome.candidates[0] if outcome.candidates else None
        out.append(
            Decision(
                top1_identity=None if top is None else top.identity_id,
                top1_score=None if top is None else top.score,
                match_identity=None if outcome.match is None else outcome.match.identity_id,
            )
        )
    return out


@dataclass(frozen=True)
class _Job:
    run_id: int
    queries_new: np.ndarray
    active: list[Decision]
    top_k: int
    threshold: float | None


@dataclass
class _Run:
    id: int
    candidate: str
    baseline: str
    sample_rate: float
    mapping: ActiveMapping
    stats: ShadowStats
    dirty: bool = True


def worker_name() -> str:
    """This process's name in ``shadow_results`` (host, pid and a random suffix)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(3)}"


class ShadowEvaluator:
    """This worker's side of shadow evaluation (see the module docstring)."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        settings: ServiceSettings,
        rank: RankFn,
        metrics: ServiceMetrics | None = None,
        loader: Callable[[Any], Any] | None = None,
        thread_initializer: Callable[[], None] | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._settings = settings
        self._rank = rank
        self._metrics = metrics
        self._loader = loader
        self._thread_initializer = thread_initializer
        self.worker = worker_name()
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=settings.shadow_queue_size)
        self._lock = threading.Lock()  # guards _run and its stats
        self._flush_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._run: _Run | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._random = random.Random()
        self.last_error: str | None = None

    # -- the request path ------------------------------------------------------------------
    def offer(self, reply: IdentifyReply) -> None:
        """Sample this reply for the running shadow run (never blocks, never raises)."""
        run = self._run
        if run is None or self._random.random() >= run.sample_rate:
            return
        if reply.transformer != run.baseline:  # served during a swap: not the run's baseline
            with self._lock:
                run.stats.skipped += 1
                run.dirty = True
            return
        job = _Job(
            run_id=run.id,
            queries_new=np.array(reply.queries_new, dtype=np.float32, copy=True),
            active=decisions(reply.outcomes),
            top_k=reply.top_k,
            threshold=reply.threshold,
        )
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            with self._lock:
                run.stats.dropped += 1
                run.dirty = True
            if self._metrics is not None:
                self._metrics.shadow_dropped.labels(candidate=run.candidate).inc()

    # -- the shadow thread -----------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._drain, name="facebridge-shadow", daemon=True
            )
            self._thread.start()

    def stop(self, *, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()

    def _drain(self) -> None:
        if self._thread_initializer is not None:
            self._thread_initializer()
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.process(job)
            finally:
                self._queue.task_done()

    def wait_idle(self) -> None:
        """Block until every queued sample has been compared (tests, benchmarks)."""
        self._queue.join()

    def process(self, job: _Job) -> None:
        """Compare one sampled reply with what the candidate would have answered."""
        run = self._run
        if run is None or run.id != job.run_id:
            return  # the run ended or changed since the sample was taken
        try:
            outcomes, _ = self._rank(
                queries_new=job.queries_new,
                mapping=run.mapping,
                top_k=job.top_k,
                threshold=job.threshold,
            )
            candidate = decisions(outcomes)
        except Exception as exc:
            log.warning("shadow run %d: candidate %s failed: %s", run.id, run.candidate, exc)
            with self._lock:
                run.stats.errors += 1
                run.dirty = True
            return
        with self._lock:
            run.stats.add_reply(active=job.active, candidate=candidate)
            run.dirty = True
        self._observe(run.candidate, job.active, candidate)

    def _observe(self, candidate: str, active: list[Decision], theirs: list[Decision]) -> None:
        if self._metrics is None:
            return
        for mine, other in zip(active, theirs, strict=True):
            self._metrics.observe_shadow(candidate=candidate, active=mine, shadow=other)

    # -- following SQL -----------------------------------------------------------------------
    def refresh(self) -> None:
        """Poller task: follow the running run in SQL, flush this worker's results."""
        with self._refresh_lock:
            facts: tuple[str, float | None] | None = None
            with self._session_factory() as session:
                current = shadow_store.running_run(session)
                if current is not None:
                    row = session.scalars(
                        select(TransformerVersion).where(
                            TransformerVersion.version == current.candidate_version
                        )
                    ).first()
                    facts = None if row is None else (row.file_name, row.threshold)
            self.flush()
            held = self._run
            if current is None or facts is None:
                self._set_run(None)
                return
            if held is not None and held.id == current.id:
                return
            try:
                runner = self._load(self._settings.transformers_path / facts[0])
            except Exception as exc:
                self.last_error = f"cannot load shadow candidate {current.candidate_version}: {exc}"
                log.error("%s", self.last_error)
                self._set_run(None)
                return
            self.last_error = None
            mapping = ActiveMapping.from_runner(
                version=current.candidate_version,
                runner=runner,
                threshold=facts[1],
                queries=QUERIES_FLIP if self._settings.flip_average_queries else QUERIES_PLAIN,
            )
            self._set_run(
                _Run(
                    id=current.id,
                    candidate=current.candidate_version,
                    baseline=current.baseline_version,
                    sample_rate=current.sample_rate,
                    mapping=mapping,
                    stats=ShadowStats(),
                )
            )
            log.info(
                "shadow run %d: %s beside %s on %.0f%% of identify replies",
                current.id,
                current.candidate_version,
                current.baseline_version,
                100 * current.sample_rate,
            )

    def _set_run(self, run: _Run | None) -> None:
        with self._lock:
            self._run = run  # one reference assignment, read once per offer

    def _load(self, path: Any) -> Any:
        if self._loader is not None:
            return self._loader(path)
        from service.registry.validation import load_transformer_runner

        return load_transformer_runner(path, settings=self._settings)

    def flush(self) -> None:
        """Write this worker's statistics of the held run when they changed. One write at a
        time (a route and the poller may flush at once: both would insert this worker's row)."""
        with self._flush_lock:
            with self._lock:
                run = self._run
                if run is None or not run.dirty:
                    return
                stats = run.stats.to_dict()
                run.dirty = False
            shadow_store.save_worker_stats(
                session_factory=self._session_factory,
                run_id=run.id,
                worker=self.worker,
                stats=stats,
            )

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> str | None:
        run = self._run
        return None if run is None else run.candidate


# ---------------------------------------------------------------------------------------------
# Starting a run and reporting on it (the admin routes call these)
# ---------------------------------------------------------------------------------------------
def start_shadow(
    *,
    session_factory: sessionmaker[Session],
    settings: ServiceSettings,
    candidate: str,
    sample_rate: float | None,
    actor: Any,
    reason: str | None,
) -> shadow_store.ShadowRunInfo:
    """Shadow ``candidate`` beside the active version. It must exist, not be the active one,
    and still fit the backbone and the gallery (the activation checks). Conflict without an
    active version, or while another candidate is shadowed."""
    from service.db.registry_state import registry_state
    from service.errors import Conflict
    from service.registry.validation import validate_stored_version

    with session_factory() as session:
        version_row(session, candidate)  # NotFound first
        active = registry_state(session=session).active_version
    if active is None:
        raise Conflict("no active transformer to compare a candidate with; activate one first")
    if active == candidate:
        raise Conflict(f"{candidate} is the active transformer; shadow another version")
    validate_stored_version(session_factory=session_factory, settings=settings, version=candidate)
    return shadow_store.create_run(
        session_factory=session_factory,
        candidate=candidate,
        baseline=active,
        sample_rate=settings.shadow_sample_rate if sample_rate is None else sample_rate,
        actor=actor,
        reason=reason,
    )


def run_report(
    session: Session,
    *,
    info: shadow_store.ShadowRunInfo,
    stats: ShadowStats,
    settings: ServiceSettings | None = None,
) -> dict[str, Any]:
    """One run as the API shows it: its facts, the merged results and the FPIR estimate (from
    the candidate file's calibration; ``settings`` locate the file and give the target)."""
    row = session.scalars(
        select(TransformerVersion).where(TransformerVersion.version == info.candidate_version)
    ).first()
    threshold = None if row is None else row.threshold
    calibration = None
    if row is not None and settings is not None:
        try:
            metadata = read_metadata(settings.transformers_path / row.file_name)
        except ContractError as exc:  # a lost file: no estimate, never a failed report
            log.warning("shadow report: %s", exc)
        else:
            flip = settings.flip_average_queries
            calibration = metadata.calibration_for(queries=QUERIES_FLIP if flip else QUERIES_PLAIN)
    return {
        "id": info.id,
        "candidate": info.candidate_version,
        "baseline": info.baseline_version,
        "sample_rate": info.sample_rate,
        "status": info.status,
        "running": info.running,
        "started_at": info.started_at,
        "started_by_key_id": info.started_by_key_id,
        "stopped_at": info.stopped_at,
        "stop_reason": info.stop_reason,
        "workers": info.workers,
        "results": stats.summary(),
        "fpir": shadow_store.estimated_fpir(
            threshold=threshold,
            gallery_faces=shadow_store.gallery_face_count(session),
            calibration=calibration,
            target_fpir=0.01 if settings is None else settings.target_fpir,
        ),
    }
