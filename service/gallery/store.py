"""SQL side of the gallery: vectors entering it, reading them back, consistency, stats.

SQL is the source of truth. Writers commit a face (and its change-log entry) in SQL first and
add it to the vector store second, so a crash in between loses nothing acknowledged: the log
entry brings it into every replica's store (:mod:`service.gallery.sync`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import ColumnElement, func, select, true
from sqlalchemy.orm import Session

from service.db.models import OLD_SPACE_SOURCES, Face
from service.db.registry_state import registry_row, registry_state
from service.errors import ContractError, InvalidInput
from service.gallery.counters import FACES, IDENTITIES, read_counts
from service.gallery.engines.base import VectorStore
from service.vectors import as_float32_matrix, l2_normalize

if TYPE_CHECKING:
    from service.settings import ServiceSettings

log = logging.getLogger(__name__)

SQL_CHUNK_ROWS = 5000
SAMPLE_IDS = 10


def set_faiss_threads(n: int) -> None:
    """FAISS OpenMP threads for this process. Call once at service start, never at import."""
    import faiss

    faiss.omp_set_num_threads(max(1, int(n)))


# ---------------------------------------------------------------------------------------------
# Vectors entering the gallery: THE place where the old side is L2-normalised.
# ---------------------------------------------------------------------------------------------
def normalize_gallery_vectors(vectors: np.ndarray, *, dim: int | None) -> np.ndarray:
    """Validate (2-D, ``dim``, finite, non-zero) and L2-normalise vectors entering the gallery."""
    arr = as_float32_matrix(vectors, dim=dim, name="gallery vectors")
    if arr.shape[1] == 0:
        raise ContractError("gallery vectors have dimension 0")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise ContractError(f"gallery vectors: NaN/inf in row {int(np.flatnonzero(~finite)[0])}")
    zero = np.linalg.norm(arr, axis=1) == 0
    if zero.any():
        raise ContractError(f"gallery vectors: zero vector in row {int(np.flatnonzero(zero)[0])}")
    return l2_normalize(arr)


def vector_bytes(vector: np.ndarray) -> bytes:
    """A normalised vector as stored in ``faces.vector`` (little-endian float32)."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def content_hash(stored: bytes) -> str:
    """sha256 of a stored vector: the same vector is kept once per identity."""
    return hashlib.sha256(stored).hexdigest()


def vector_from_bytes(data: bytes, dim: int) -> np.ndarray:
    arr = np.frombuffer(data, dtype="<f4")
    if arr.shape[0] != dim:
        raise ContractError(f"stored vector has {arr.shape[0]} values, expected {dim}")
    return arr.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Gallery dimension / model id (registry_state row)
# ---------------------------------------------------------------------------------------------
def gallery_dim(*, session: Session, settings: ServiceSettings | None = None) -> int | None:
    """The gallery's dimension: settings, else registry_state, else any stored face, else None."""
    if settings is not None and settings.gallery_dim is not None:
        return settings.gallery_dim
    stored = registry_state(session=session).gallery_dim
    if stored is not None:
        return stored
    return session.scalars(select(Face.dim).limit(1)).first()


def gallery_model_id(*, session: Session, settings: ServiceSettings | None = None) -> str | None:
    """The old model's id: settings, else the one recorded by ``gallery import --model-id``."""
    if settings is not None and settings.gallery_model_id:
        return settings.gallery_model_id
    return registry_state(session=session).gallery_model_id


def claim_gallery_dim(*, session: Session, dim: int, settings: ServiceSettings | None) -> None:
    """Record ``dim`` as the gallery dimension, or refuse a vector of another dimension."""
    known = gallery_dim(session=session, settings=settings)
    if known is not None and known != dim:
        raise ContractError(f"gallery vectors have dimension {known}; got {dim}")
    state = registry_row(session)
    if state.gallery_dim is None:
        state.gallery_dim = dim


# ---------------------------------------------------------------------------------------------
# Reading faces back / reconcile / check
# ---------------------------------------------------------------------------------------------
def iter_face_vectors(
    session: Session,
    *,
    ids: list[int] | None = None,
    chunk_rows: int = SQL_CHUNK_ROWS,
    where: ColumnElement[bool] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) chunks from SQL, in id order; only ``ids`` when given; only the faces
    ``where`` selects (one space: :func:`service.gallery.spaces.in_space`) when given."""
    where = true() if where is None else where
    if ids is not None:
        for start in range(0, len(ids), chunk_rows):
            part = ids[start : start + chunk_rows]
            rows = session.execute(
                select(Face.id, Face.vector, Face.dim)
                .where(Face.id.in_(part), where)
                .order_by(Face.id)
            ).all()
            if rows:
                yield _rows_to_arrays(rows)
        return
    last_id = -1
    while True:  # keyset pagination: constant memory, no server-side cursor needed
        rows = session.execute(
            select(Face.id, Face.vector, Face.dim)
            .where(Face.id > last_id, where)
            .order_by(Face.id)
            .limit(chunk_rows)
        ).all()
        if not rows:
            return
        last_id = int(rows[-1][0])
        yield _rows_to_arrays(rows)


def _rows_to_arrays(rows: list) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    ids = np.asarray([r[0] for r in rows], dtype=np.int64)
    vectors = np.vstack([vector_from_bytes(r[1], r[2]) for r in rows])
    return ids, vectors


def sql_face_ids(session: Session, *, where: ColumnElement[bool] | None = None) -> set[int]:
    return set(session.scalars(select(Face.id).where(true() if where is None else where)).all())


def sql_face_count(session: Session) -> int:
    """Faces in SQL, O(1) (the sharded counters)."""
    return int(read_counts(session).get(FACES, 0))


def sample_face_vectors(
    session: Session, *, rows: int, wanted: int, where: ColumnElement[bool] | None = None
) -> np.ndarray:
    """About ``wanted`` stored vectors spread over the whole id range (IVF training)."""
    where = true() if where is None else where
    stride = max(1, rows // max(1, wanted))
    parts, last_id = [], -1
    while True:
        batch = session.execute(
            select(Face.id, Face.vector, Face.dim)
            .where(Face.id > last_id, Face.id % stride == 0, where)
            .order_by(Face.id)
            .limit(SQL_CHUNK_ROWS)
        ).all()
        if not batch:
            break
        last_id = int(batch[-1][0])
        parts.append(_rows_to_arrays(batch)[1])
    if not parts:  # no id divisible by the stride: the first rows will do
        first = next(iter_face_vectors(session, chunk_rows=max(1, wanted), where=where), None)
        return first[1] if first is not None else np.zeros((0, 0), np.float32)
    return np.vstack(parts)


@dataclass(frozen=True)
class ConsistencyReport:
    """Vector store vs SQL. ``method`` ``ids``: same count and the same id set (O(n));
    ``counts``: the counts agree (O(1), what start-up and /readyz use)."""

    sql_count: int
    index_count: int
    missing_in_index: int
    extra_in_index: int
    sample_missing: list[int] = field(default_factory=list)
    sample_extra: list[int] = field(default_factory=list)
    repaired: bool = False
    rebuilt: bool = False
    method: str = "ids"

    @property
    def consistent(self) -> bool:
        return (
            self.missing_in_index == 0
            and self.extra_in_index == 0
            and self.sql_count == self.index_count
        )

    @property
    def detail(self) -> str:
        if self.consistent:
            how = "" if self.method == "ids" else " (counts)"
            return f"index consistent with SQL{how} ({self.sql_count} vectors)"
        return (
            f"index has {self.index_count} vectors, SQL {self.sql_count}; "
            f"{self.missing_in_index} missing (e.g. {self.sample_missing}), "
            f"{self.extra_in_index} extra (e.g. {self.sample_extra})"
        )


def _compare(
    session: Session, index: VectorStore, where: ColumnElement[bool] | None
) -> tuple[set[int], set[int], int, int]:
    where = Face.source.in_(OLD_SPACE_SOURCES) if where is None else where  # the old space
    """(missing in index, extra in index, SQL count, index count).

    The index is read BEFORE SQL: a write that lands in between (SQL commit, then FAISS) then
    shows up as "missing" (re-adding it is harmless) rather than as "extra" (dropping it would
    hide an acknowledged face until the next sync).
    """
    index_ids = index.ids()
    index_count = index.ntotal
    sql_ids = sql_face_ids(session, where=where)
    return sql_ids - index_ids, index_ids - sql_ids, len(sql_ids), index_count


def _report(
    missing: set[int], extra: set[int], sql_count: int, index_count: int
) -> ConsistencyReport:
    return ConsistencyReport(
        sql_count=sql_count,
        index_count=index_count,
        missing_in_index=len(missing),
        extra_in_index=len(extra),
        sample_missing=sorted(missing)[:SAMPLE_IDS],
        sample_extra=sorted(extra)[:SAMPLE_IDS],
    )


def check_consistency(
    *, session: Session, index: VectorStore, where: ColumnElement[bool] | None = None
) -> ConsistencyReport:
    """Compare ``ntotal`` and the id sets of the index and of SQL (O(n)); ``where``: the
    faces of the index's space."""
    missing, extra, sql_count, index_count = _compare(session, index, where)
    return _report(missing, extra, sql_count, index_count)


def count_report(
    *, session: Session, index: VectorStore, sql_count: int | None = None
) -> ConsistencyReport:
    """Compare the store's count with SQL's (O(1): the counters; ``sql_count``: its space's,
    default the old space's: legacy + mapped faces)."""
    if sql_count is None:
        counts = read_counts(session)
        sql_count = sum(int(counts.get(f"{FACES}.{s}", 0)) for s in OLD_SPACE_SOURCES)
    index_count = index.ntotal
    return ConsistencyReport(
        sql_count=sql_count,
        index_count=index_count,
        missing_in_index=max(0, sql_count - index_count),
        extra_in_index=max(0, index_count - sql_count),
        method="counts",
    )


def reconcile(
    *,
    session: Session,
    index: VectorStore,
    quiet: bool = False,
    where: ColumnElement[bool] | None = None,
) -> ConsistencyReport:
    """Add faces SQL has and the index lacks, drop ids SQL no longer has (``where``: the faces
    of the index's space; default the old space). Returns the repair."""
    missing, extra, sql_count, index_count = _compare(session, index, where)
    report = _report(missing, extra, sql_count, index_count)
    if report.consistent:
        return report
    if extra:
        index.remove(ids=sorted(extra))
    for ids, vectors in iter_face_vectors(session, ids=sorted(missing), where=where):
        index.add(ids=ids, vectors=vectors)
    (log.info if quiet else log.warning)("gallery index synchronised from SQL: %s", report.detail)
    return replace(report, repaired=True)


# ---------------------------------------------------------------------------------------------
# Stats
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GalleryStats:
    identities: int
    faces: int
    dim: int | None
    index_type: str
    index_ntotal: int
    by_source: dict[str, int]
    model_id: str | None
    by_space: dict[str, int] = field(default_factory=dict)  # old space + native spaces


def gallery_stats(
    *, session: Session, index: VectorStore | None, settings: ServiceSettings | None = None
) -> GalleryStats:
    """Counts (O(1): the sharded counters), dimension, index type, vectors by source."""
    counts = read_counts(session)
    by_source = {"legacy": 0, "mapped": 0}
    for name, value in counts.items():
        if name.startswith(FACES + "."):
            by_source[name[len(FACES) + 1 :]] = value
    index_type = (
        index.index_type if index is not None else (settings.index_type if settings else "flat")
    )
    old_faces = sum(by_source.get(s, 0) for s in OLD_SPACE_SOURCES)
    model_id = gallery_model_id(session=session, settings=settings)
    by_space = {model_id or "default": old_faces}
    by_space.update({k[len("space.") :]: v for k, v in counts.items() if k.startswith("space.")})
    return GalleryStats(
        identities=int(counts.get(IDENTITIES, 0)),
        faces=old_faces,  # the old space's: what the index of the old space holds
        dim=gallery_dim(session=session, settings=settings),
        index_type=index_type,
        index_ntotal=index.ntotal if index is not None else 0,
        by_source=by_source,
        model_id=model_id,
        by_space=by_space,
    )


def identities_with_faces(session: Session) -> int:
    """How many identities have at least one face (the searchable identities)."""
    return int(session.scalar(select(func.count(func.distinct(Face.identity_id)))) or 0)


def require_dim(index: VectorStore, dim: int) -> None:
    """Refuse query vectors whose dimension differs from the gallery's."""
    if index.dim is not None and index.dim != dim:
        raise InvalidInput(f"query dimension {dim} != gallery dimension {index.dim}")
