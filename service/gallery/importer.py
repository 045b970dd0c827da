"""Bulk import of legacy (old-model) gallery vectors: ``.npz``, Parquet or CSV.

- ``.npz``: ``old`` float [N, d] plus ``name`` and/or ``external_id`` (str [N]); optional ``path``.
- Parquet / CSV: columns ``external_id`` and/or ``name``, and either ``v0 .. v{d-1}`` or one
  list column ``vector`` (CSV: a JSON list or space-separated numbers); optional ``path``.

Idempotent: an identity is keyed by its external id (the name doubles as external id when the
file has no ``external_id``); a face by (identity, sha256 of its normalised vector), so importing
the same file twice stores nothing new. Every format is read in chunks (``.npz`` members too:
:mod:`service.gallery.npz_stream`). The whole import is one transaction: a malformed row
anywhere raises ContractError and nothing is stored. Faces reach the vector stores after the
commit, through the change log (SQL first).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db.locks import exclusive
from service.db.models import Face, Identity, utcnow
from service.errors import (
    ContractError,
    FacebridgeError,
    InvalidInput,
)
from service.gallery.changes import record_face_changes
from service.gallery.counters import IDENTITIES, add_counts, face_deltas
from service.gallery.import_files import (
    DEFAULT_CHUNK_ROWS,
    ImportChunk,
    ImportFormat,
    detect_format,
    read_import_file,
)
from service.gallery.npz_stream import ImportLimits
from service.gallery.spaces import old_space, record_old_model_id
from service.gallery.store import (
    claim_gallery_dim,
    content_hash,
    gallery_dim,
    normalize_gallery_vectors,
    vector_bytes,
)

if TYPE_CHECKING:
    from service.settings import ServiceSettings

SQL_IN_CHUNK = 900  # stays under SQLite's bound-parameter limit


@dataclass(frozen=True)
class ImportReport:
    format: str
    rows: int
    identities_created: int
    identities_matched: int
    faces_added: int
    faces_skipped: int
    dim: int | None


# ---------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------
def _identity_ids_for(
    session: Session, chunk: ImportChunk, known: dict[str, int]
) -> tuple[list[int], int, int]:
    """Identity id per row (creating missing identities); returns (ids, created, matched)."""
    wanted = [k for k in dict.fromkeys(chunk.external_ids) if k not in known]
    matched = 0
    for start in range(0, len(wanted), SQL_IN_CHUNK):
        part = wanted[start : start + SQL_IN_CHUNK]
        for ext, identity_id in session.execute(
            select(Identity.external_id, Identity.id).where(Identity.external_id.in_(part))
        ).all():
            known[str(ext)] = int(identity_id)
            matched += 1
    first_name = dict(zip(chunk.external_ids, chunk.names, strict=True))
    missing = [k for k in wanted if k not in known]
    if missing:
        now = utcnow()
        rows = [
            {
                "external_id": k,
                "name": first_name[k],
                "attributes": {},
                "created_at": now,
                "updated_at": now,
            }
            for k in missing
        ]
        # Core-level bulk insert (much faster than one ORM object per row); ids in input order.
        new_ids = session.scalars(
            insert(Identity).returning(Identity.id, sort_by_parameter_order=True), rows
        ).all()
        known.update(zip(missing, (int(i) for i in new_ids), strict=True))
    created = len(missing)
    return [known[k] for k in chunk.external_ids], created, matched


def _existing_hashes(session: Session, identity_ids: list[int]) -> set[tuple[int, str]]:
    found: set[tuple[int, str]] = set()
    unique = sorted(set(identity_ids))
    for start in range(0, len(unique), SQL_IN_CHUNK):
        part = unique[start : start + SQL_IN_CHUNK]
        for iid, h in session.execute(
            select(Face.identity_id, Face.content_hash).where(Face.identity_id.in_(part))
        ).all():
            found.add((int(iid), str(h)))
    return found


def _store_chunk(
    session: Session,
    chunk: ImportChunk,
    vectors: np.ndarray,
    *,
    dim: int,
    existing_below: int,
    matched: set[int],
    space: str,
) -> tuple[int, int, int]:
    """Insert one chunk's identities and new faces (+ their change-log entries and counts).
    Returns (rows, identities created, faces skipped). Only the ids of matched pre-existing
    identities (id <= ``existing_below``) are kept across chunks: duplicates and identities are
    found in SQL, which sees this transaction's own rows, so a new gallery streams flat."""
    identity_ids, created, _ = _identity_ids_for(session, chunk, {})
    matched.update(i for i in identity_ids if i <= existing_below)
    seen = _existing_hashes(session, identity_ids)
    faces, skipped, now = [], 0, utcnow()
    for i, identity_id in enumerate(identity_ids):
        stored = vector_bytes(vectors[i])
        key = (identity_id, content_hash(stored))
        if key in seen:
            skipped += 1
            continue
        seen.add(key)
        faces.append(
            {
                "identity_id": identity_id,
                "vector": stored,
                "dim": dim,
                "content_hash": key[1],
                "source": "legacy",
                "space": space,
                "transformer_version": None,
                "origin": chunk.origins[i],
                "created_at": now,
            }
        )
    if faces:
        ids = session.scalars(insert(Face).returning(Face.id), faces).all()
        record_face_changes(session, added=[int(i) for i in ids], spaces=dict.fromkeys(ids, space))
    deltas = face_deltas(["legacy"] * len(faces), sign=1, spaces=[space] * len(faces))
    add_counts(session, {IDENTITIES: created, **deltas})
    return len(identity_ids), created, skipped


@dataclass
class _Totals:
    rows: int = 0
    created: int = 0
    skipped: int = 0
    matched: set[int] = field(default_factory=set)
    dim: int | None = None


def _store_chunks(
    session: Session,
    chunks: Iterator[ImportChunk],
    *,
    model_id: str | None,
    settings: ServiceSettings | None,
) -> _Totals:
    """Store every chunk (normalised against the gallery's dimension, claimed on the first)."""
    totals = _Totals(dim=gallery_dim(session=session, settings=settings))
    space = model_id or old_space(session=session, settings=settings)
    existing_below = int(session.scalar(select(func.max(Identity.id))) or 0)
    for chunk in chunks:
        if chunk.vectors.shape[0] == 0:
            continue
        rows = totals.rows
        try:
            vectors = normalize_gallery_vectors(chunk.vectors, dim=totals.dim)
        except ContractError as exc:
            raise ContractError(f"rows {rows}..{rows + len(chunk.vectors) - 1}: {exc}") from exc
        if totals.dim is None:
            totals.dim = int(vectors.shape[1])
        claim_gallery_dim(session=session, dim=totals.dim, settings=settings)
        n, c, k = _store_chunk(
            session,
            chunk,
            vectors,
            dim=totals.dim,
            existing_below=existing_below,
            matched=totals.matched,
            space=space,
        )
        totals.rows += n
        totals.created += c
        totals.skipped += k
    return totals


def import_gallery(
    *,
    session_factory: sessionmaker[Session],
    source: str | Path | BinaryIO,
    format: ImportFormat | None = None,
    filename: str | None = None,
    model_id: str | None = None,
    settings: ServiceSettings | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> ImportReport:
    """Import legacy vectors (source ``legacy``) in one transaction, streamed chunk by chunk
    (memory stays flat with the file's size). The faces reach every replica's vector store
    through the change log (the caller may refresh its own at once: ``GallerySync.refresh``).

    ``source`` is a path or a binary file object (``filename`` then names the format).
    ``model_id`` records the old model's id for the transformer checks (must not contradict a
    recorded one). Raises ContractError for a malformed file, with nothing stored.
    """
    if not isinstance(source, str | Path):
        path = None
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidInput(f"import file not found: {path}")
    fmt: ImportFormat = format or detect_format(filename or (path.name if path else None))
    reader_source: Path | BinaryIO = path if path is not None else source  # type: ignore[assignment]

    limits = ImportLimits.from_settings(settings)
    # One import at a time (threads, workers, the CLI): a second import waits for the first to
    # commit, then sees its identities, instead of both creating the same external id.
    with session_factory() as session, exclusive(session, "gallery-import"):
        try:
            chunks = read_import_file(
                reader_source, format=fmt, chunk_rows=chunk_rows, limits=limits
            )
            totals = _store_chunks(session, chunks, model_id=model_id, settings=settings)
            if totals.rows == 0:
                raise ContractError("the import file holds no rows")
            if model_id:
                record_old_model_id(session, model_id)
            session.commit()
        except FacebridgeError:
            session.rollback()
            raise
        except IntegrityError as exc:
            session.rollback()
            raise ContractError(f"import conflicts with stored data ({exc.orig})") from exc
        except Exception:
            session.rollback()
            raise
    return ImportReport(
        format=fmt,
        rows=totals.rows,
        identities_created=totals.created,
        identities_matched=len(totals.matched),
        faces_added=totals.rows - totals.skipped,
        faces_skipped=totals.skipped,
        dim=totals.dim,
    )
