"""Shadow runs in SQL: start, stop, find the running one, store and merge per-worker results.

At most one run is ``running`` (a partial unique index). Every worker polls for it
(:class:`service.registry.shadow.ShadowEvaluator`), keeps its own statistics and rewrites its
own ``shadow_results`` row; readers sum the rows. Any switch of the active version stops the
running run in the same transaction (its baseline is gone), and so does deleting the candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service import decision
from service.db.models import (
    SHADOW_RUNNING,
    SHADOW_STOPPED,
    Face,
    ShadowResult,
    ShadowRun,
    utcnow,
)
from service.decision import ScoreCalibration, open_set_threshold
from service.errors import Conflict, NotFound
from service.registry import audit
from service.registry.audit import Actor
from service.registry.shadow_stats import ShadowStats


@dataclass(frozen=True)
class ShadowRunInfo:
    id: int
    candidate_version: str
    baseline_version: str
    sample_rate: float
    status: str
    started_at: datetime
    started_by_key_id: int | None
    stopped_at: datetime | None
    stop_reason: str | None
    workers: int = 0
    created: bool = True

    @property
    def running(self) -> bool:
        return self.status == SHADOW_RUNNING

    @classmethod
    def from_row(cls, row: ShadowRun, *, workers: int = 0, created: bool = True) -> ShadowRunInfo:
        return cls(
            id=int(row.id),
            candidate_version=row.candidate_version,
            baseline_version=row.baseline_version,
            sample_rate=float(row.sample_rate),
            status=row.status,
            started_at=row.started_at,
            started_by_key_id=row.started_by_key_id,
            stopped_at=row.stopped_at,
            stop_reason=row.stop_reason,
            workers=workers,
            created=created,
        )


def running_run(session: Session) -> ShadowRunInfo | None:
    row = session.scalars(select(ShadowRun).where(ShadowRun.status == SHADOW_RUNNING)).first()
    return None if row is None else ShadowRunInfo.from_row(row)


def create_run(
    *,
    session_factory: sessionmaker[Session],
    candidate: str,
    baseline: str,
    sample_rate: float,
    actor: Actor,
    reason: str | None,
) -> ShadowRunInfo:
    """A running run of ``candidate`` against ``baseline`` (the existing one when that very run
    is already going: ``created=False``). Conflict while another candidate is shadowed."""
    with session_factory() as session:
        current = session.scalars(
            select(ShadowRun).where(ShadowRun.status == SHADOW_RUNNING)
        ).first()
        if current is not None:
            if current.candidate_version == candidate and current.baseline_version == baseline:
                return ShadowRunInfo.from_row(current, created=False)
            raise Conflict(
                f"a shadow run of {current.candidate_version} is running; stop it first "
                f"(DELETE /v1/admin/transformers/{current.candidate_version}/shadow)"
            )
        row = ShadowRun(
            candidate_version=candidate,
            baseline_version=baseline,
            sample_rate=float(sample_rate),
            status=SHADOW_RUNNING,
            started_by_key_id=actor.key_id,
        )
        session.add(row)
        try:
            session.flush()
            audit.record_event(
                session,
                action=audit.ACTION_SHADOW_START,
                actor=actor,
                subject=candidate,
                from_value=baseline,
                to_value=candidate,
                reason=reason,
                details={"run_id": int(row.id), "sample_rate": float(sample_rate)},
            )
            session.commit()
        except IntegrityError as exc:  # another start won the partial unique index
            session.rollback()
            raise Conflict("another shadow run started at the same time; retry") from exc
        return ShadowRunInfo.from_row(row)


def stop_running(
    session: Session, *, reason: str, actor: Actor, candidate: str | None = None
) -> int | None:
    """Within the caller's transaction: stop the running run (only ``candidate``'s when given).
    Returns the stopped run's id."""
    stmt = select(ShadowRun).where(ShadowRun.status == SHADOW_RUNNING)
    if candidate is not None:
        stmt = stmt.where(ShadowRun.candidate_version == candidate)
    row = session.scalars(stmt).first()
    if row is None:
        return None
    row.status = SHADOW_STOPPED
    row.stopped_at = utcnow()
    row.stop_reason = reason
    audit.record_event(
        session,
        action=audit.ACTION_SHADOW_STOP,
        actor=actor,
        subject=row.candidate_version,
        from_value=row.baseline_version,
        to_value=row.candidate_version,
        reason=reason,
        details={"run_id": int(row.id), **_compact(merged_stats(session, run_id=int(row.id)))},
    )
    session.flush()
    return int(row.id)


def stop_candidate(
    *,
    session_factory: sessionmaker[Session],
    candidate: str,
    actor: Actor,
    reason: str | None,
) -> ShadowRunInfo:
    """Stop the running run of ``candidate``; NotFound when it is not being shadowed."""
    with session_factory() as session:
        run_id = stop_running(
            session, reason=reason or "stopped by an operator", actor=actor, candidate=candidate
        )
        if run_id is None:
            raise NotFound(f"no shadow run of {candidate} is running")
        session.commit()
        return ShadowRunInfo.from_row(_run_row(session, run_id))


def _run_row(session: Session, run_id: int) -> ShadowRun:
    row = session.get(ShadowRun, run_id)
    if row is None:
        raise NotFound(f"shadow run {run_id} not found")
    return row


def save_worker_stats(
    *, session_factory: sessionmaker[Session], run_id: int, worker: str, stats: dict[str, Any]
) -> None:
    """Rewrite this worker's row of ``run_id`` (only this worker writes it: no lost update)."""
    with session_factory() as session:
        row = session.scalars(
            select(ShadowResult).where(ShadowResult.run_id == run_id, ShadowResult.worker == worker)
        ).first()
        if row is None:
            if session.get(ShadowRun, run_id) is None:
                return  # the run is gone (its candidate was deleted)
            session.add(ShadowResult(run_id=run_id, worker=worker, stats=stats))
        else:
            row.stats = stats
            row.updated_at = utcnow()
        session.commit()


def merged_stats(session: Session, *, run_id: int) -> ShadowStats:
    merged = ShadowStats()
    for stats in session.scalars(select(ShadowResult.stats).where(ShadowResult.run_id == run_id)):
        merged.merge(ShadowStats.from_dict(stats or {}))
    return merged


def get_run(session: Session, *, run_id: int) -> tuple[ShadowRunInfo, ShadowStats]:
    row = _run_row(session, run_id)
    return _with_workers(session, row), merged_stats(session, run_id=run_id)


def latest_run_of(session: Session, *, candidate: str) -> tuple[ShadowRunInfo, ShadowStats]:
    """The newest run of ``candidate`` (running or not); NotFound when it was never shadowed."""
    row = session.scalars(
        select(ShadowRun)
        .where(ShadowRun.candidate_version == candidate)
        .order_by(ShadowRun.id.desc())
        .limit(1)
    ).first()
    if row is None:
        raise NotFound(f"{candidate} has no shadow run")
    return _with_workers(session, row), merged_stats(session, run_id=int(row.id))


def list_runs(session: Session, *, limit: int = 20) -> list[tuple[ShadowRunInfo, ShadowStats]]:
    rows = session.scalars(select(ShadowRun).order_by(ShadowRun.id.desc()).limit(limit)).all()
    return [(_with_workers(session, r), merged_stats(session, run_id=int(r.id))) for r in rows]


def _with_workers(session: Session, row: ShadowRun) -> ShadowRunInfo:
    count = session.scalar(
        select(func.count()).select_from(ShadowResult).where(ShadowResult.run_id == row.id)
    )
    return ShadowRunInfo.from_row(row, workers=int(count or 0))


def _compact(stats: ShadowStats) -> dict[str, Any]:
    """The figures an audit record keeps (not the histograms)."""
    summary = stats.summary()
    return {
        "images": summary["images"],
        "top1_agreement": summary["top1_agreement"],
        "decision_change_rate": summary["decision_change_rate"],
        "reply_change_rate": summary["reply_change_rate"],
    }


def summary_for_promotion(session: Session, *, version: str) -> dict[str, Any] | None:
    """What the operator had seen before activating ``version``: its latest shadow run's
    figures and that run's baseline (None when it was never shadowed)."""
    row = session.scalars(
        select(ShadowRun)
        .where(ShadowRun.candidate_version == version)
        .order_by(ShadowRun.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return {
        "run_id": int(row.id),
        "baseline": row.baseline_version,
        **_compact(merged_stats(session, run_id=int(row.id))),
    }


def gallery_face_count(session: Session) -> int:
    """Gallery vectors (the N of an open-set FPIR: each face is a chance for an impostor)."""
    return int(session.scalar(select(func.count()).select_from(Face)) or 0)


def estimated_fpir(
    *,
    threshold: float | None,
    gallery_faces: int,
    calibration: ScoreCalibration | None = None,
    target_fpir: float = 0.01,
) -> dict[str, Any]:
    """The candidate's estimated false-positive identification rate at the current gallery size.

    With the candidate's open-set calibration (``service.decision``): the FPIR of the threshold
    the service's rule would use for it now (the calibrated threshold for ``target_fpir`` at
    ``gallery_faces``), and what its 1:1 ``threshold`` would give instead. Without one (an older
    file) it is reported as unavailable, with the reason, rather than guessed.
    """
    if calibration is None:
        return {
            "value": None,
            "available": False,
            "gallery_faces": gallery_faces,
            "threshold": threshold,
            "detail": "unavailable: the candidate file carries no open-set calibration "
            "(refit it with `facebridge transformer fit`)",
        }
    rule = open_set_threshold(
        calibration=calibration, target_fpir=target_fpir, gallery_faces=gallery_faces
    )
    one_to_one = (
        None
        if threshold is None
        else decision.estimated_fpir(
            calibration=calibration, threshold=threshold, gallery_faces=gallery_faces
        )
    )
    return {
        "value": decision.estimated_fpir(
            calibration=calibration, threshold=rule, gallery_faces=gallery_faces
        ),
        "available": True,
        "gallery_faces": gallery_faces,
        "threshold": rule,
        "target_fpir": target_fpir,
        "one_to_one_threshold": threshold,
        "one_to_one_fpir": one_to_one,
    }
