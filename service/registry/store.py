"""Transformer versions: upload + validate, list, activate, roll back, delete.

Files are content-addressed (``<transformers_dir>/<sha256>.onnx``, written to a temp file and
renamed). A version id is ``t-<first 12 hex of sha256>``, so the same bytes are the same version.
Activation runs in one transaction that flips the active row (a partial unique index allows at
most one), records the previous version for rollback and bumps ``registry_state.generation``,
which every worker polls (:mod:`service.registry.holder`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.contracts import META_VALIDATION_SAMPLE
from service.db.models import (
    STATE_ACTIVE,
    STATE_INACTIVE,
    TransformerVersion,
    utcnow,
)
from service.db.registry_state import (
    bump_generation,
    lock_registry_state,
    registry_row,
    registry_state,
)
from service.errors import Conflict, ContractError, InvalidInput, NotFound, PayloadTooLarge
from service.gallery.store import gallery_dim, gallery_model_id
from service.metadata_fields import decode_vectors
from service.registry import audit, shadow_store
from service.registry.audit import LOCAL_ACTOR, Actor
from service.vectors import l2_normalize

if TYPE_CHECKING:
    from service.inference.transformer import TransformerSession
    from service.settings import ServiceSettings

log = logging.getLogger(__name__)

VERSION_PREFIX = "t-"
PROBE_SEED = 1234


@dataclass(frozen=True)
class TransformerInfo:
    version: str
    sha256: str
    file: Path
    size_bytes: int
    input_dim: int
    output_dim: int
    source_model: str
    target_model: str
    recipe: str
    threshold: float | None
    metrics: dict[str, Any]
    state: str
    activated_at: datetime | None
    created_at: datetime
    note: str | None = None
    created: bool = True
    fusion_weight: float = 1.0

    @property
    def active(self) -> bool:
        return self.state == STATE_ACTIVE

    @property
    def two_way(self) -> bool:
        """A two-way file (backward map too): identify and verify use fused scores."""
        return self.fusion_weight < 1.0

    @classmethod
    def from_row(
        cls, row: TransformerVersion, *, directory: Path, created: bool = True
    ) -> TransformerInfo:
        return cls(
            version=row.version,
            sha256=row.sha256,
            file=directory / row.file_name,
            size_bytes=int(row.size_bytes),
            input_dim=int(row.input_dim),
            output_dim=int(row.output_dim),
            source_model=row.source_model,
            target_model=row.target_model,
            recipe=row.recipe,
            threshold=row.threshold,
            metrics=dict(row.metrics or {}),
            state=row.state,
            activated_at=row.activated_at,
            created_at=row.created_at,
            note=row.note,
            created=created,
            fusion_weight=float(row.fusion_weight),
        )


@dataclass(frozen=True)
class BackboneFacts:
    """What an uploaded transformer must fit on the input side."""

    model_id: str | None
    output_dim: int | None
    extra: dict[str, Any] = field(default_factory=dict)


def _json_safe(value: Any) -> Any:
    """Metrics as strict JSON (Postgres refuses NaN/inf): non-finite numbers become None."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


def version_for(sha256: str) -> str:
    return f"{VERSION_PREFIX}{sha256[:12]}"


def backbone_facts(settings: ServiceSettings) -> BackboneFacts:
    """Model id and output dim of the configured backbone (manifest only; no ONNX session)."""
    if settings.backbone_manifest is None:
        return BackboneFacts(model_id=None, output_dim=None)
    from service.contracts import load_backbone_manifest

    manifest, _ = load_backbone_manifest(settings.backbone_manifest)
    return BackboneFacts(model_id=manifest.model_id, output_dim=manifest.output_dim)


def backbone_facts_of(backbone: Any) -> BackboneFacts | None:
    """Model id and output dim of a LOADED backbone (None when there is none)."""
    if backbone is None:
        return None
    return BackboneFacts(model_id=backbone.model_id, output_dim=int(backbone.output_dim))


def load_transformer_session(
    path: Path, *, settings: ServiceSettings, name: str | None = None
) -> TransformerSession:
    """An ORT session for a stored transformer, with the service's providers and threads.
    ``name`` is what error messages call the file (the uploader's file name)."""
    from service.inference.transformer import TransformerSession

    return TransformerSession(
        path,
        providers=settings.providers,
        intra_op_threads=settings.ort_intra_op_threads,
        name=name,
    )


def _score_validation_pairs(
    session: TransformerSession, path: Path, *, flip: bool
) -> dict[str, float]:
    """Metrics of the transformer on a pairs file (eval split when present), scored as the
    service scores: fused for a two-way file; flip-averaged queries when ``flip`` and the file
    carries ``new_flip``."""
    from service.contracts import SPLIT_EVAL, load_pairs
    from service.vectors import l2_normalize

    pairs = load_pairs(path)
    if pairs.split is not None and (pairs.split == SPLIT_EVAL).any():
        pairs = pairs.select_split(SPLIT_EVAL)
    if pairs.new_dim != session.input_dim or pairs.old_dim != session.output_dim:
        raise ContractError(
            f"validation pairs are {pairs.new_dim} -> {pairs.old_dim}; the transformer maps "
            f"{session.input_dim} -> {session.output_dim}"
        )
    new = np.asarray(pairs.new, dtype=np.float32)
    _probe_map(
        session.map_raw,
        new,
        what="transformer",
        d_out=session.output_dim,
        probes_are=f"the validation pairs' new-model vectors ({path.name})",
    )
    mapped = session.map(new)
    old = l2_normalize(np.asarray(pairs.old, dtype=np.float32))
    metrics: dict[str, float] = {
        "validation_rows": float(len(pairs)),
        "validation_mean_cosine": float(np.mean(np.sum(mapped * old, axis=1))),
    }
    from service.evaluation.protocol import evaluate_mapping, session_rows

    try:
        rows = session_rows(pairs, session=session, flip=flip)
        report = evaluate_mapping(eval_pairs=pairs, mapped=rows)
    except Exception as exc:  # e.g. a pairs file without enough identities for the protocol
        log.warning("validation protocol skipped: %s", exc)
        return metrics
    for key, value in _flatten_report(report).items():
        metrics[f"validation_{key}"] = value
    return metrics


def _flatten_report(report: Any) -> dict[str, float]:
    """Numeric fields of an EvaluationReport's mapped row (best effort, never fails)."""
    out: dict[str, float] = {}
    try:
        rows = getattr(report, "rows", None)
        mapped = None
        if isinstance(rows, dict):
            mapped = rows.get("mapped")
        elif isinstance(rows, list | tuple):
            mapped = next((r for r in rows if getattr(r, "name", None) == "mapped"), None)
        source = mapped if mapped is not None else report
        values = source if isinstance(source, dict) else getattr(source, "__dict__", {})
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[str(key)] = float(value)
    except Exception:  # the report's shape belongs to another module: never block an upload
        return {}
    return out


def check_fits(
    session: TransformerSession,
    *,
    backbone: BackboneFacts,
    gallery_dim: int | None,
    gallery_model: str | None,
) -> None:
    """ContractError unless the transformer maps ``backbone``'s space into the gallery's:
    input dim and source model = the backbone's, output dim and target model = the gallery's
    (each check only where that fact is known)."""
    meta = session.metadata
    if backbone.output_dim is not None and session.input_dim != backbone.output_dim:
        raise ContractError(
            f"transformer input dim {session.input_dim} != backbone output dim "
            f"{backbone.output_dim} ({backbone.model_id})"
        )
    if backbone.model_id is not None and meta.source_model != backbone.model_id:
        raise ContractError(
            f"transformer source model {meta.source_model!r} != backbone {backbone.model_id!r}"
        )
    if gallery_dim is not None and session.output_dim != gallery_dim:
        raise ContractError(
            f"transformer output dim {session.output_dim} != gallery dim {gallery_dim}"
        )
    if gallery_model is not None and meta.target_model != gallery_model:
        raise ContractError(
            f"transformer target model {meta.target_model!r} != gallery model {gallery_model!r}"
        )


def validate_transformer(
    session: TransformerSession,
    *,
    settings: ServiceSettings,
    expected_output_dim: int | None,
    expected_target_model: str | None,
) -> dict[str, float]:
    """Check a loaded transformer fits this service; returns validation metrics.

    Its outputs must be finite and non-zero on random unit probes, on the validation sample
    of real new-model vectors the file carries (``facebridge.validation_sample``, written at
    fit time) and on the validation pairs' ``new`` vectors when configured.
    """
    meta = session.metadata
    check_fits(
        session,
        backbone=backbone_facts(settings),
        gallery_dim=expected_output_dim,
        gallery_model=expected_target_model,
    )
    if meta.threshold is not None and not -1.0 <= meta.threshold <= 1.0:
        raise ContractError(f"transformer threshold {meta.threshold} is not a cosine in [-1, 1]")
    rng = np.random.default_rng(PROBE_SEED)
    probes = l2_normalize(rng.standard_normal((settings.probe_vectors, session.input_dim)))
    _probe_map(session.map_raw, probes, what="transformer", d_out=session.output_dim)
    if session.two_way:
        gallery_probes = l2_normalize(
            rng.standard_normal((settings.probe_vectors, session.output_dim))
        )
        _probe_map(
            session.map_gallery_raw,
            gallery_probes,
            what="transformer's gallery map",
            d_out=session.input_dim,
        )
    if meta.validation_sample is not None:
        sample = decode_vectors(
            meta.validation_sample, dim=session.input_dim, key=META_VALIDATION_SAMPLE
        )
        _probe_map(
            session.map_raw,
            l2_normalize(sample),
            what="transformer",
            d_out=session.output_dim,
            probes_are="its validation sample of real face vectors",
        )
    metrics: dict[str, float] = {}
    if settings.validation_pairs is not None:
        metrics.update(
            _score_validation_pairs(
                session, settings.validation_pairs, flip=settings.flip_average_queries
            )
        )
    return metrics


def _probe_map(
    run: Callable[[np.ndarray], np.ndarray],
    probes: np.ndarray,
    *,
    what: str,
    d_out: int,
    probes_are: str = "random probe vectors",
) -> None:
    """One head of a transformer on ``probes``: runs, [n, d_out], finite, non-zero."""
    try:
        raw = run(probes)
    except Exception as exc:
        raise ContractError(f"{what} fails on {probes_are} ({type(exc).__name__})") from exc
    if raw.shape != (probes.shape[0], d_out):
        raise ContractError(f"{what} returned shape {raw.shape} for {probes.shape} probes")
    bad = ~np.isfinite(raw).all(axis=1)
    if bad.any():
        raise ContractError(
            f"{what} outputs NaN/inf on {int(bad.sum())} of {len(raw)} of {probes_are}"
        )
    if (np.linalg.norm(raw, axis=1) == 0).any():
        raise ContractError(f"{what} outputs zero vectors on {probes_are}")


def _row(session: Session, version: str) -> TransformerVersion:
    row = session.scalars(
        select(TransformerVersion).where(TransformerVersion.version == version)
    ).first()
    if row is None:
        raise NotFound(f"transformer version {version!r} not found")
    return row


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------
UPLOAD_CHUNK = 1 << 20


def _receive_upload(
    source: bytes | BinaryIO, *, directory: Path, limit: int
) -> tuple[Path, str, int]:
    """Copy an upload into a private temp file beside the stored ones, hashing it and enforcing
    ``limit`` as the bytes arrive. Returns (temp path, sha256, size); the caller removes it."""
    directory.mkdir(parents=True, exist_ok=True)
    stream: BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else source
    digest, size = hashlib.sha256(), 0
    tmp = directory / f".upload-{os.getpid()}-{os.urandom(6).hex()}.part"
    try:
        with open(tmp, "wb") as out:
            while chunk := stream.read(UPLOAD_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"transformer file is over {limit} bytes (the limit)")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise InvalidInput("empty transformer upload")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest(), size


def upload_transformer(
    *,
    session_factory: sessionmaker[Session],
    settings: ServiceSettings,
    data: bytes | BinaryIO,
    filename: str | None = None,
    activate: bool = False,
    note: str | None = None,
    actor: Actor = LOCAL_ACTOR,
) -> TransformerInfo:
    """Validate and store an ONNX transformer (bytes, or a binary file read in chunks;
    audited); optionally activate it.

    Garbage, wrong dims or wrong model ids raise ContractError naming ``filename``, with
    nothing stored (no row, no file) and the active version unchanged. The same bytes uploaded
    again return the existing version (``created=False``).
    """
    directory = settings.transformers_path
    tmp, sha256, size = _receive_upload(
        data, directory=directory, limit=settings.max_transformer_bytes
    )
    try:
        return _store_upload(
            tmp,
            sha256=sha256,
            size=size,
            filename=filename or "upload.onnx",
            session_factory=session_factory,
            settings=settings,
            activate=activate,
            note=note,
            actor=actor,
        )
    finally:
        tmp.unlink(missing_ok=True)


def _store_upload(
    tmp: Path,
    *,
    sha256: str,
    size: int,
    filename: str,
    session_factory: sessionmaker[Session],
    settings: ServiceSettings,
    activate: bool,
    note: str | None,
    actor: Actor,
) -> TransformerInfo:
    directory, version = settings.transformers_path, version_for(sha256)
    file_name = f"{sha256}.onnx"
    with session_factory() as session:
        existing = session.scalars(
            select(TransformerVersion).where(TransformerVersion.sha256 == sha256)
        ).first()
        if existing is None:
            expected_dim = gallery_dim(session=session, settings=settings)
            expected_model = gallery_model_id(session=session, settings=settings)
    if existing is not None:
        info = TransformerInfo.from_row(existing, directory=directory, created=False)
        if not info.file.is_file():  # file lost: restore it from the upload
            os.replace(tmp, info.file)
        if activate and not info.active:
            return activate_transformer(
                session_factory=session_factory,
                settings=settings,
                version=info.version,
                actor=actor,
                reason=note,
            )
        return info

    # Everything is validated and computed on the temp file; only then does it get its name.
    session_obj = load_transformer_session(tmp, settings=settings, name=filename)
    metrics = validate_transformer(
        session_obj,
        settings=settings,
        expected_output_dim=expected_dim,
        expected_target_model=expected_model,
    )
    meta = session_obj.metadata
    row = TransformerVersion(
        version=version,
        sha256=sha256,
        file_name=file_name,
        size_bytes=size,
        input_dim=session_obj.input_dim,
        output_dim=session_obj.output_dim,
        source_model=meta.source_model,
        target_model=meta.target_model,
        recipe=meta.recipe,
        threshold=meta.threshold,
        fusion_weight=session_obj.fusion_weight,
        metrics=_json_safe({**meta.metrics, **metrics}),
        note=note,
        state=STATE_INACTIVE,
    )
    final = directory / file_name
    os.replace(tmp, final)
    try:
        with session_factory() as session:
            session.add(row)
            try:
                session.flush()
                audit.record_event(
                    session,
                    action=audit.ACTION_UPLOAD,
                    actor=actor,
                    subject=version,
                    to_value=version,
                    reason=note,
                    details={"recipe": meta.recipe, "sha256": sha256},
                )
                session.commit()
            except IntegrityError:  # the same file uploaded concurrently: its row stands
                session.rollback()
                info = TransformerInfo.from_row(
                    _row(session, version), directory=directory, created=False
                )
            else:
                info = TransformerInfo.from_row(row, directory=directory, created=True)
    except BaseException:
        with session_factory() as session:
            referenced = session.scalar(
                select(TransformerVersion.id).where(TransformerVersion.sha256 == sha256)
            )
        if referenced is None:
            final.unlink(missing_ok=True)  # never a file without its row
        raise
    log.info("stored transformer %s (%s)", version, meta.recipe)
    if activate:
        return activate_transformer(
            session_factory=session_factory,
            settings=settings,
            version=version,
            actor=actor,
            reason=note,
        )
    return info


def list_transformers(*, session: Session, settings: ServiceSettings) -> list[TransformerInfo]:
    rows = session.scalars(select(TransformerVersion).order_by(TransformerVersion.id)).all()
    return [TransformerInfo.from_row(r, directory=settings.transformers_path) for r in rows]


def get_transformer(
    *, session: Session, settings: ServiceSettings, version: str
) -> TransformerInfo:
    return TransformerInfo.from_row(_row(session, version), directory=settings.transformers_path)


def _switch_active(session: Session, *, target_version: str | None) -> str | None:
    """Within the caller's transaction: make ``target_version`` the only active row (None: no
    active row). Returns the previously active version.

    The registry lock is taken BEFORE anything is read, so a concurrent activation, deletion or
    rollback runs entirely before or after this one; every UPDATE's row count is checked. The
    partial unique index stays the last line of defence.
    """
    lock_registry_state(session)
    state = registry_row(session)
    target = _row(session, target_version) if target_version is not None else None
    current = session.scalars(
        select(TransformerVersion).where(TransformerVersion.state == STATE_ACTIVE)
    ).first()
    previous = current.version if current is not None else None
    if current is not None and (target is None or current.id != target.id):
        # Deactivate first and flush: the index must never see two active rows.
        _update_one(
            session,
            update(TransformerVersion)
            .where(TransformerVersion.id == current.id)
            .values(state=STATE_INACTIVE),
            what=f"deactivating {current.version}",
        )
        session.flush()
    if target is not None:
        _update_one(
            session,
            update(TransformerVersion)
            .where(TransformerVersion.id == target.id)
            .values(state=STATE_ACTIVE, activated_at=utcnow()),
            what=f"activating {target.version}",
        )
    if previous != (target.version if target is not None else None):
        state.previous_version = previous
    state.active_version = target.version if target is not None else None
    state.updated_at = utcnow()
    session.flush()
    bump_generation(session)
    return previous


def _update_one(session: Session, statement: Any, *, what: str) -> None:
    """Run an UPDATE that must change exactly one row (Conflict otherwise: retry)."""
    result = session.execute(statement)
    if result.rowcount != 1:
        raise Conflict(f"the registry changed while {what}; retry")


def activate_transformer(
    *,
    session_factory: sessionmaker[Session],
    settings: ServiceSettings,
    version: str,
    actor: Actor = LOCAL_ACTOR,
    reason: str | None = None,
) -> TransformerInfo:
    """Make ``version`` the active transformer (atomic; bumps the generation; audited).

    The file is re-validated against the current backbone and gallery before the switch.
    Activating the active version again is a no-op (no generation bump, no event).
    """
    with session_factory() as session:
        row = _row(session, version)
        if row.state == STATE_ACTIVE:
            return TransformerInfo.from_row(row, directory=settings.transformers_path)
    validate_stored_version(session_factory=session_factory, settings=settings, version=version)
    return _commit_switch(
        session_factory=session_factory,
        settings=settings,
        version=version,
        action=audit.ACTION_ACTIVATE,
        actor=actor,
        reason=reason,
    )


def validate_stored_version(
    *, session_factory: sessionmaker[Session], settings: ServiceSettings, version: str
) -> None:
    """A stored version's file is intact and still fits the backbone and the gallery."""
    with session_factory() as session:
        info = TransformerInfo.from_row(
            _row(session, version), directory=settings.transformers_path
        )
        expected_dim = gallery_dim(session=session, settings=settings)
        expected_model = gallery_model_id(session=session, settings=settings)
    _check_stored_file(info)
    validate_transformer(
        load_transformer_session(info.file, settings=settings),
        settings=settings.model_copy(update={"validation_pairs": None}),
        expected_output_dim=expected_dim,
        expected_target_model=expected_model,
    )


def _commit_switch(
    *,
    session_factory: sessionmaker[Session],
    settings: ServiceSettings,
    version: str,
    action: str,
    actor: Actor,
    reason: str | None,
    expected_target: str | None = None,
) -> TransformerInfo:
    """One transaction: switch to ``version``, record the event, stop shadow runs (their
    baseline is gone), point ``previous_version`` at the new rollback target.

    ``expected_target`` (rollback): the history must still name ``version`` once the registry
    row is locked, else another change won the race (409, retry).
    """
    with session_factory() as session:
        try:
            lock_registry_state(session)  # first: then everything read is current
            if expected_target is not None:
                active = session.scalars(
                    select(TransformerVersion.version).where(
                        TransformerVersion.state == STATE_ACTIVE
                    )
                ).first()
                if audit.rollback_target(session, active=active) != expected_target:
                    raise Conflict("the activation history changed meanwhile; retry the rollback")
            previous = _switch_active(session, target_version=version)
            details = shadow_store.summary_for_promotion(session, version=version)
            audit.record_event(
                session,
                action=action,
                actor=actor,
                subject=version,
                from_value=previous,
                to_value=version,
                reason=reason,
                details={"shadow": details} if details else None,
            )
            shadow_store.stop_running(session, reason=f"{action} of {version}", actor=actor)
            _point_previous_at_rollback_target(session, active=version)
            session.commit()
        except IntegrityError as exc:
            session.rollback()
            raise Conflict("another activation happened at the same time; retry") from exc
        except Exception:
            session.rollback()
            raise
        log.info("%s: transformer %s -> %s (%s)", action, previous, version, actor.label)
        # Re-read, not refresh: the active row cannot be deleted, so it is there.
        session.expire_all()
        row = _row(session, version)
        return TransformerInfo.from_row(row, directory=settings.transformers_path)


def _point_previous_at_rollback_target(session: Session, *, active: str | None) -> None:
    """``registry_state.previous_version`` = what a rollback would re-activate now."""
    state = registry_row(session)
    state.previous_version = audit.rollback_target(session, active=active)


def _check_stored_file(info: TransformerInfo) -> None:
    try:  # not is_file() then read: a concurrent delete may remove it in between
        data = info.file.read_bytes()
    except OSError as exc:
        raise ContractError(f"transformer file of {info.version} is missing: {info.file}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.sha256:
        raise ContractError(f"transformer file of {info.version} is corrupt (sha256 mismatch)")


def rollback_transformer(
    *,
    session_factory: sessionmaker[Session],
    settings: ServiceSettings,
    actor: Actor = LOCAL_ACTOR,
    reason: str | None = None,
) -> TransformerInfo:
    """Re-activate the version before the current one in the activation history (a stack:
    three rollbacks after activating A, B, C, D give C, B, A). Conflict when nothing is older."""
    with session_factory() as session:
        active = registry_state(session=session).active_version
        target = audit.rollback_target(session, active=active)
    if target is None:
        raise Conflict(
            "nothing older to roll back to: the activation history holds no earlier version"
            + (f" than {active}" if active else "")
        )
    validate_stored_version(session_factory=session_factory, settings=settings, version=target)
    return _commit_switch(
        session_factory=session_factory,
        settings=settings,
        version=target,
        action=audit.ACTION_ROLLBACK,
        actor=actor,
        reason=reason,
        expected_target=target,
    )


def deactivate_transformer(
    *,
    session_factory: sessionmaker[Session],
    settings: ServiceSettings,
    actor: Actor = LOCAL_ACTOR,
    reason: str | None = None,
) -> str | None:
    """Leave no version active (identify then answers 503). Returns the version deactivated."""
    with session_factory() as session:
        previous = _switch_active(session, target_version=None)
        if previous is not None:
            audit.record_event(
                session,
                action=audit.ACTION_DEACTIVATE,
                actor=actor,
                subject=previous,
                from_value=previous,
                reason=reason,
            )
            shadow_store.stop_running(session, reason="no active version", actor=actor)
        _point_previous_at_rollback_target(session, active=None)
        session.commit()
    return previous


def delete_transformer(
    *,
    session_factory: sessionmaker[Session],
    settings: ServiceSettings,
    version: str,
    actor: Actor = LOCAL_ACTOR,
    reason: str | None = None,
) -> None:
    """Delete an inactive version and its file (audited; it leaves the rollback history and
    any shadow run of it stops). Conflict for the active version."""
    with session_factory() as session:
        lock_registry_state(session)  # first: an activation of this version waits, or ran
        row = _row(session, version)
        if row.state == STATE_ACTIVE:
            raise Conflict(f"{version} is the active transformer; activate another one first")
        path = settings.transformers_path / row.file_name
        shadow_store.stop_running(
            session, reason=f"candidate {version} deleted", actor=actor, candidate=version
        )
        session.delete(row)
        audit.record_event(
            session,
            action=audit.ACTION_DELETE,
            actor=actor,
            subject=version,
            from_value=version,
            reason=reason,
        )
        active = registry_state(session=session).active_version
        _point_previous_at_rollback_target(session, active=active)
        session.commit()
    path.unlink(missing_ok=True)  # after the commit: a crash leaves an orphan file, not a row
