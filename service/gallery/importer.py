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

import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

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
    UnsupportedMediaType,
)
from service.gallery.changes import record_face_changes
from service.gallery.counters import IDENTITIES, add_counts, face_deltas
from service.gallery.npz_stream import ImportLimits, NpzColumns
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

ImportFormat = Literal["npz", "parquet", "csv"]
FORMATS: tuple[str, ...] = ("npz", "parquet", "csv")
VECTOR_LIST_COLUMNS = ("vector", "old", "embedding")
DEFAULT_CHUNK_ROWS = 10_000
SQL_IN_CHUNK = 900  # stays under SQLite's bound-parameter limit
_V_COLUMN = re.compile(r"^v(\d+)$")
MAX_TEXT = 255  # identities.name / external_id column width
MAX_ORIGIN = 1024  # faces.origin column width


@dataclass(frozen=True)
class ImportChunk:
    external_ids: list[str]
    names: list[str | None]
    vectors: np.ndarray
    origins: list[str | None]


@dataclass(frozen=True)
class ImportReport:
    format: str
    rows: int
    identities_created: int
    identities_matched: int
    faces_added: int
    faces_skipped: int
    dim: int | None


def detect_format(name: str | None) -> ImportFormat:
    suffix = Path(name or "").suffix.lower().lstrip(".")
    if suffix in ("npz", "parquet", "csv"):
        return suffix  # type: ignore[return-value]
    if suffix == "pq":
        return "parquet"
    raise InvalidInput(
        f"cannot tell the import format from {name!r}: use a .npz, .parquet or .csv file "
        "(or pass the format)"
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _make_chunk(
    *,
    external_ids: list[Any] | None,
    names: list[Any] | None,
    vectors: np.ndarray,
    origins: list[Any] | None,
    first_row: int,
) -> ImportChunk:
    n = vectors.shape[0]
    ext = [_text(v) for v in external_ids] if external_ids is not None else [None] * n
    nam = [_text(v) for v in names] if names is not None else [None] * n
    keys: list[str] = []
    for i, (e, m) in enumerate(zip(ext, nam, strict=True)):
        key = e if e is not None else m
        if key is None:
            raise ContractError(f"row {first_row + i}: neither external_id nor name is set")
        if len(key) > MAX_TEXT or (m is not None and len(m) > MAX_TEXT):
            raise ContractError(f"row {first_row + i}: name/external_id over {MAX_TEXT} characters")
        keys.append(key)
    # The origin is informational: keep its tail when a path is longer than the column.
    org = [_text(v) for v in origins] if origins is not None else [None] * n
    org = [o if o is None or len(o) <= MAX_ORIGIN else o[-MAX_ORIGIN:] for o in org]
    return ImportChunk(external_ids=keys, names=nam, vectors=vectors, origins=org)


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------
def _read_npz(
    source: Path | BinaryIO, chunk_rows: int, limits: ImportLimits
) -> Iterator[ImportChunk]:
    archive = NpzColumns(source, ("old", "name", "external_id", "path"))
    try:
        archive.check_sizes(limits)  # before a byte is inflated: zip bombs, lying headers
        if "old" not in archive.names:
            raise ContractError(f".npz lacks the 'old' array (has {archive.files})")
        if "name" not in archive.names and "external_id" not in archive.names:
            raise ContractError(".npz needs a 'name' or an 'external_id' array")
        shape, dtype = archive.shapes["old"], archive.dtypes["old"]
        if len(shape) != 2 or not np.issubdtype(dtype, np.number):
            raise ContractError(f"'old' must be a numeric [N, d] array, got {dtype} {shape}")
        limits.check_rows(shape[0])
        for key in archive.names[1:]:
            if archive.shapes[key] != (shape[0],):
                got = archive.shapes[key]
                raise ContractError(f"'{key}' must be 1-D with {shape[0]} rows, got shape {got}")
        start = 0
        for block in archive.blocks(chunk_rows):

            def part(key: str, block: dict[str, np.ndarray] = block) -> list[Any] | None:
                return block[key].tolist() if key in block else None

            yield _make_chunk(
                external_ids=part("external_id"),
                names=part("name"),
                vectors=np.asarray(block["old"], dtype=np.float32),
                origins=part("path"),
                first_row=start,
            )
            start += block["old"].shape[0]
    finally:
        archive.close()


def _vector_column_names(names: list[str]) -> list[str] | None:
    indexed = sorted((int(m.group(1)), n) for n in names if (m := _V_COLUMN.match(n)))
    if not indexed:
        return None
    if [i for i, _ in indexed] != list(range(len(indexed))):
        raise ContractError("vector columns must be v0 .. v{d-1} without gaps")
    return [n for _, n in indexed]


def _parse_vector_text(text: Any, row: int) -> list[float]:
    if text is None:
        raise ContractError(f"row {row}: empty vector")
    if isinstance(text, list | tuple | np.ndarray):
        return [float(x) for x in text]
    s = str(text).strip()
    try:
        if s.startswith("["):
            return [float(x) for x in json.loads(s)]
        return [float(x) for x in s.replace(",", " ").split()]
    except (ValueError, TypeError) as exc:
        raise ContractError(f"row {row}: vector is not a list of numbers") from exc


def _batch_to_chunk(batch: Any, first_row: int) -> ImportChunk:
    import pyarrow as pa

    names = batch.schema.names
    if "name" not in names and "external_id" not in names:
        raise ContractError("the file needs a 'name' or an 'external_id' column")
    v_cols = _vector_column_names(names)
    n = batch.num_rows
    try:
        if v_cols is not None:
            arrays = []
            for col in v_cols:
                column = batch.column(col)
                if column.null_count:
                    raise ContractError(f"column {col!r} has empty values")
                arrays.append(np.asarray(column.cast(pa.float32()).to_numpy(zero_copy_only=False)))
            vectors = np.stack(arrays, axis=1) if arrays else np.zeros((n, 0), np.float32)
        else:
            list_col = next((c for c in VECTOR_LIST_COLUMNS if c in names), None)
            if list_col is None:
                raise ContractError("no vector columns: expected v0..v{d-1} or a 'vector' column")
            values = batch.column(list_col).to_pylist()
            rows = [_parse_vector_text(v, first_row + i) for i, v in enumerate(values)]
            lengths = {len(r) for r in rows}
            if len(lengths) > 1:
                raise ContractError(f"vectors of different lengths {sorted(lengths)}")
            vectors = np.asarray(rows, dtype=np.float32).reshape(n, -1)
    except ContractError:
        raise
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise ContractError(f"rows {first_row}..: unreadable vector values ({exc})") from exc

    def column(key: str) -> list[Any] | None:
        return batch.column(key).to_pylist() if key in names else None

    return _make_chunk(
        external_ids=column("external_id"),
        names=column("name"),
        vectors=vectors,
        origins=column("path"),
        first_row=first_row,
    )


def _read_parquet(
    source: Path | BinaryIO, chunk_rows: int, limits: ImportLimits
) -> Iterator[ImportChunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source)
    except (pa.ArrowException, OSError) as exc:
        raise ContractError(f"not a readable Parquet file ({exc})") from exc
    meta = parquet.metadata
    limits.check_rows(int(meta.num_rows))
    groups = range(meta.num_row_groups)
    limits.check_expanded(sum(meta.row_group(i).total_byte_size for i in groups), what="the file")
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            yield _batch_to_chunk(batch, row)
            row += batch.num_rows
    except pa.ArrowException as exc:
        raise ContractError(f"Parquet file unreadable near row {row} ({exc})") from exc


def _read_csv(
    source: Path | BinaryIO, chunk_rows: int, limits: ImportLimits
) -> Iterator[ImportChunk]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    text_types = {k: pa.string() for k in ("external_id", "name", "path", "vector")}
    try:
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            convert_options=pacsv.ConvertOptions(column_types=text_types),
        )
    except (pa.ArrowException, OSError) as exc:
        raise ContractError(f"not a readable CSV file ({exc})") from exc
    row = 0
    try:
        for batch in reader:
            limits.check_rows(row + batch.num_rows)  # counted as blocks stream in
            for start in range(0, batch.num_rows, chunk_rows):
                part = batch.slice(start, chunk_rows)
                yield _batch_to_chunk(part, row)
                row += part.num_rows
    except pa.ArrowException as exc:
        raise ContractError(f"CSV file unreadable near row {row} ({exc})") from exc


def read_import_file(
    source: Path | BinaryIO,
    *,
    format: ImportFormat,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    limits: ImportLimits | None = None,
) -> Iterator[ImportChunk]:
    """Chunks of a gallery import file (no database involved), within ``limits``."""
    readers = {"npz": _read_npz, "parquet": _read_parquet, "csv": _read_csv}
    if format not in readers:
        raise InvalidInput(f"unknown import format {format!r}; choose {', '.join(FORMATS)}")
    if format != "npz" and importlib.util.find_spec("pyarrow") is None:
        raise UnsupportedMediaType(
            f"{format} import needs pyarrow (install facebridge[tables]); .npz imports without it"
        )
    return readers[format](source, chunk_rows, limits or ImportLimits())


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
    rows = created = skipped = 0
    matched: set[int] = set()
    dim: int | None = None
    # One import at a time (threads, workers, the CLI): a second import waits for the first to
    # commit, then sees its identities, instead of both creating the same external id.
    with session_factory() as session, exclusive(session, "gallery-import"):
        try:
            dim = gallery_dim(session=session, settings=settings)
            space = model_id or old_space(session=session, settings=settings)
            existing_below = int(session.scalar(select(func.max(Identity.id))) or 0)
            chunks = read_import_file(
                reader_source, format=fmt, chunk_rows=chunk_rows, limits=limits
            )
            for chunk in chunks:
                if chunk.vectors.shape[0] == 0:
                    continue
                try:
                    vectors = normalize_gallery_vectors(chunk.vectors, dim=dim)
                except ContractError as exc:
                    raise ContractError(
                        f"rows {rows}..{rows + len(chunk.vectors) - 1}: {exc}"
                    ) from exc
                if dim is None:
                    dim = int(vectors.shape[1])
                claim_gallery_dim(session=session, dim=dim, settings=settings)
                n, c, k = _store_chunk(
                    session,
                    chunk,
                    vectors,
                    dim=dim,
                    existing_below=existing_below,
                    matched=matched,
                    space=space,
                )
                rows, created, skipped = rows + n, created + c, skipped + k
            if rows == 0:
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
        rows=rows,
        identities_created=created,
        identities_matched=len(matched),
        faces_added=rows - skipped,
        faces_skipped=skipped,
        dim=dim,
    )
