"""Uploading a transformer: receive the bytes (size limit, sha256), validate the file, then
store it content-addressed (``<transformers_dir>/<sha256>.onnx``) with its row, audited.

A version id is ``t-<first 12 hex of sha256>``, so the same bytes are the same version.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import STATE_INACTIVE, TransformerVersion
from service.errors import InvalidInput, PayloadTooLarge
from service.files import file_sha256, fsync_file, move_into_place, temp_path_for
from service.gallery.store import gallery_dim, gallery_model_id
from service.registry import audit
from service.registry.activation import activate_transformer
from service.registry.audit import LOCAL_ACTOR, Actor
from service.registry.records import StoredTransformer, json_safe, version_for, version_row
from service.registry.validation import load_transformer_runner, validate_transformer

if TYPE_CHECKING:
    from service.settings import ServiceSettings

log = logging.getLogger(__name__)

UPLOAD_CHUNK = 1 << 20


def _receive_upload(
    source: bytes | BinaryIO, *, directory: Path, limit: int
) -> tuple[Path, str, int]:
    """Copy an upload into a private temp file beside the stored ones, enforcing ``limit`` as
    the bytes arrive, then hash it. Returns (temp path, sha256, size); the caller removes it."""
    directory.mkdir(parents=True, exist_ok=True)
    stream: BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else source
    size = 0
    tmp = temp_path_for(directory / "upload.onnx")
    try:
        with open(tmp, "wb") as out:
            while chunk := stream.read(UPLOAD_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"transformer file is over {limit} bytes (the limit)")
                out.write(chunk)
        if size == 0:
            raise InvalidInput("empty transformer upload")
        fsync_file(tmp)
        return tmp, file_sha256(tmp), size
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def upload_transformer(
    *,
    session_factory: sessionmaker[Session],
    settings: ServiceSettings,
    data: bytes | BinaryIO,
    filename: str | None = None,
    activate: bool = False,
    note: str | None = None,
    actor: Actor = LOCAL_ACTOR,
) -> StoredTransformer:
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
) -> StoredTransformer:
    directory = settings.transformers_path
    with session_factory() as session:
        existing = session.scalars(
            select(TransformerVersion).where(TransformerVersion.sha256 == sha256)
        ).first()
        if existing is None:
            expected_dim = gallery_dim(session=session, settings=settings)
            expected_model = gallery_model_id(session=session, settings=settings)
    if existing is not None:
        info = StoredTransformer.from_row(existing, directory=directory, created=False)
        if not info.file.is_file():  # file lost: restore it from the upload
            move_into_place(tmp, info.file)
    else:
        # Everything is validated and computed on the temp file; only then does it get its name.
        runner = load_transformer_runner(tmp, settings=settings, name=filename)
        metrics = validate_transformer(
            runner,
            settings=settings,
            expected_output_dim=expected_dim,
            expected_target_model=expected_model,
        )
        meta = runner.metadata
        row = TransformerVersion(
            version=version_for(sha256),
            sha256=sha256,
            file_name=f"{sha256}.onnx",
            size_bytes=size,
            input_dim=runner.input_dim,
            output_dim=runner.output_dim,
            source_model=meta.source_model,
            target_model=meta.target_model,
            recipe=meta.recipe,
            threshold=meta.threshold,
            fusion_weight=runner.fusion_weight,
            metrics=json_safe({**meta.metrics, **metrics}),
            note=note,
            state=STATE_INACTIVE,
        )
        info = _insert_version(
            tmp, row=row, session_factory=session_factory, directory=directory, actor=actor
        )
        log.info("stored transformer %s (%s)", info.version, meta.recipe)
    if activate and not info.active:
        return activate_transformer(
            session_factory=session_factory,
            settings=settings,
            version=info.version,
            actor=actor,
            reason=note,
        )
    return info


def _insert_version(
    tmp: Path,
    *,
    row: TransformerVersion,
    session_factory: sessionmaker[Session],
    directory: Path,
    actor: Actor,
) -> StoredTransformer:
    """Give the validated temp file its content-addressed name, then commit its row and the
    upload event. A concurrent upload of the same bytes wins the row (``created=False``); a
    failure removes the file unless another row references it (never a file without its row)."""
    final = directory / row.file_name
    move_into_place(tmp, final)
    try:
        with session_factory() as session:
            session.add(row)
            try:
                session.flush()
                audit.record_event(
                    session,
                    action=audit.ACTION_UPLOAD,
                    actor=actor,
                    subject=row.version,
                    to_value=row.version,
                    reason=row.note,
                    details={"recipe": row.recipe, "sha256": row.sha256},
                )
                session.commit()
            except IntegrityError:  # the same file uploaded concurrently: its row stands
                session.rollback()
                return StoredTransformer.from_row(
                    version_row(session, row.version), directory=directory, created=False
                )
            return StoredTransformer.from_row(row, directory=directory, created=True)
    except BaseException:
        with session_factory() as session:
            referenced = session.scalar(
                select(TransformerVersion.id).where(TransformerVersion.sha256 == row.sha256)
            )
        if referenced is None:
            final.unlink(missing_ok=True)  # never a file without its row
        raise
