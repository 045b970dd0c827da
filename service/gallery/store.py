"""SQL <-> FAISS: vectors entering the gallery, rebuild, reconciliation, consistency, stats.

SQL is the source of truth. Writers commit a face in SQL first and add it to FAISS second, so a
crash in between loses nothing acknowledged: :func:`open_gallery` reconciles the index with SQL
on start (adds what is missing, drops what SQL no longer has) and rebuilds it when the file is
missing, corrupt or of another type.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import REGISTRY_STATE_ID, Face, Identity, RegistryState
from service.errors import ContractError, InvalidInput
from service.gallery.index import GalleryIndex, IndexParams, sidecar_path
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
def registry_row(session: Session, *, for_update: bool = False) -> RegistryState:
    """The single registry_state row (created when a database lacks it)."""
    stmt = select(RegistryState).where(RegistryState.id == REGISTRY_STATE_ID)
    if for_update:
        stmt = stmt.with_for_update()
    row = session.scalars(stmt).one_or_none()
    if row is None:
        row = RegistryState(id=REGISTRY_STATE_ID, generation=0)
        session.add(row)
        session.flush()
    return row


def gallery_dim(*, session: Session, settings: ServiceSettings | None = None) -> int | None:
    """The gallery's dimension: settings, else registry_state, else any stored face, else None."""
    if settings is not None and settings.gallery_dim is not None:
        return settings.gallery_dim
    state = session.get(RegistryState, REGISTRY_STATE_ID)
    if state is not None and state.gallery_dim is not None:
        return state.gallery_dim
    return session.scalars(select(Face.dim).limit(1)).first()


def gallery_model_id(*, session: Session, settings: ServiceSettings | None = None) -> str | None:
    """The old model's id: settings, else the one recorded by ``gallery import --model-id``."""
    if settings is not None and settings.gallery_model_id:
        return settings.gallery_model_id
    state = session.get(RegistryState, REGISTRY_STATE_ID)
    return None if state is None else state.gallery_model_id


def claim_gallery_dim(*, session: Session, dim: int, settings: ServiceSettings | None) -> None:
    """Record ``dim`` as the gallery dimension, or refuse a vector of another dimension."""
    known = gallery_dim(session=session, settings=settings)
    if known is not None and known != dim:
        raise ContractError(f"gallery vectors have dimension {known}; got {dim}")
    state = registry_row(session)
    if state.gallery_dim is None:
        state.gallery_dim = dim


def bump_gallery_revision(session: Session) -> None:
    """Tell other workers the face set changed (in the caller's transaction)."""
    registry_row(session)
    session.execute(
        update(RegistryState)
        .where(RegistryState.id == REGISTRY_STATE_ID)
        .values(gallery_revision=RegistryState.gallery_revision + 1)
    )


def gallery_revision(session: Session) -> int:
    value = session.scalar(
        select(RegistryState.gallery_revision).where(RegistryState.id == REGISTRY_STATE_ID)
    )
    return int(value or 0)


# ---------------------------------------------------------------------------------------------
# Rebuild / reconcile / check
# ---------------------------------------------------------------------------------------------
def iter_face_vectors(
    session: Session, *, ids: list[int] | None = None, chunk_rows: int = SQL_CHUNK_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) chunks from SQL, in id order; only ``ids`` when given."""
    if ids is not None:
        for start in range(0, len(ids), chunk_rows):
            part = ids[start : start + chunk_rows]
            rows = session.execute(
                select(Face.id, Face.vector, Face.dim).where(Face.id.in_(part)).order_by(Face.id)
            ).all()
            if rows:
                yield _rows_to_arrays(rows)
        return
    last_id = -1
    while True:  # keyset pagination: constant memory, no server-side cursor needed
        rows = session.execute(
            select(Face.id, Face.vector, Face.dim)
            .where(Face.id > last_id)
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


def sql_face_ids(session: Session) -> set[int]:
    return set(session.scalars(select(Face.id)).all())


def rebuild_from_sql(*, session: Session, settings: ServiceSettings) -> GalleryIndex:
    """A fresh index holding exactly the faces in SQL (trained on all of them for IVF)."""
    dim = gallery_dim(session=session, settings=settings)
    index = GalleryIndex.from_settings(dim=dim, settings=settings)
    if settings.index_type == "ivf":
        # IVF trains on its first add: hand it everything at once so the centroids fit the data.
        chunks = list(iter_face_vectors(session))
        if chunks:
            index.add(
                ids=np.concatenate([c[0] for c in chunks]),
                vectors=np.vstack([c[1] for c in chunks]),
            )
        return index
    for ids, vectors in iter_face_vectors(session):
        index.add(ids=ids, vectors=vectors)
    return index


@dataclass(frozen=True)
class ConsistencyReport:
    """FAISS vs SQL. ``consistent`` means same count and the same id set."""

    sql_count: int
    index_count: int
    missing_in_index: int
    extra_in_index: int
    sample_missing: list[int] = field(default_factory=list)
    sample_extra: list[int] = field(default_factory=list)
    repaired: bool = False
    rebuilt: bool = False

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
            return f"index consistent with SQL ({self.sql_count} vectors)"
        return (
            f"index has {self.index_count} vectors, SQL {self.sql_count}; "
            f"{self.missing_in_index} missing (e.g. {self.sample_missing}), "
            f"{self.extra_in_index} extra (e.g. {self.sample_extra})"
        )


def _compare(session: Session, index: GalleryIndex) -> tuple[set[int], set[int], int, int]:
    """(missing in index, extra in index, SQL count, index count).

    The index is read BEFORE SQL: a write that lands in between (SQL commit, then FAISS) then
    shows up as "missing" (re-adding it is harmless) rather than as "extra" (dropping it would
    hide an acknowledged face until the next sync).
    """
    index_ids = index.ids()
    index_count = index.ntotal
    sql_ids = sql_face_ids(session)
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


def check_consistency(*, session: Session, index: GalleryIndex) -> ConsistencyReport:
    """Compare ``ntotal`` and the id sets of the index and of SQL."""
    missing, extra, sql_count, index_count = _compare(session, index)
    return _report(missing, extra, sql_count, index_count)


def reconcile(*, session: Session, index: GalleryIndex, quiet: bool = False) -> ConsistencyReport:
    """Add faces SQL has and the index lacks, drop ids SQL no longer has. Returns the repair."""
    missing, extra, sql_count, index_count = _compare(session, index)
    report = _report(missing, extra, sql_count, index_count)
    if report.consistent:
        return report
    if extra:
        index.remove(ids=sorted(extra))
    for ids, vectors in iter_face_vectors(session, ids=sorted(missing)):
        index.add(ids=ids, vectors=vectors)
    (log.info if quiet else log.warning)("gallery index synchronised from SQL: %s", report.detail)
    return replace(report, repaired=True)


def save_gallery(*, index: GalleryIndex, settings: ServiceSettings) -> None:
    """Persist the index atomically at ``settings.index_file``."""
    index.save(settings.index_file)


def open_gallery(
    *, session_factory: sessionmaker[Session], settings: ServiceSettings
) -> tuple[GalleryIndex, ConsistencyReport]:
    """Load the persisted index and make it agree with SQL (repair, or rebuild); then save it.

    The report describes what was found before any repair (``repaired``/``rebuilt`` say what
    was done); the returned index is consistent with SQL at the time of the call.
    """
    path = settings.index_file
    params = IndexParams.from_settings(settings)
    with session_factory() as session:
        index: GalleryIndex | None = None
        reason = "no index file"
        if path.exists() or sidecar_path(path).exists():
            try:
                index = GalleryIndex.load(path, params=params, index_type=settings.index_type)
                dim = gallery_dim(session=session, settings=settings)
                if index.dim is not None and dim is not None and index.dim != dim:
                    reason, index = f"index dim {index.dim} != gallery dim {dim}", None
            except ContractError as exc:
                reason = str(exc)
                index = None
        if index is None:
            log.warning("rebuilding gallery index from SQL: %s", reason)
            index = rebuild_from_sql(session=session, settings=settings)
            sql_count = index.ntotal
            report = ConsistencyReport(
                sql_count=sql_count,
                index_count=0,
                missing_in_index=sql_count,
                extra_in_index=0,
                rebuilt=True,
            )
        else:
            # IVF keeps its centroids through repairs; `facebridge gallery rebuild` retrains.
            report = reconcile(session=session, index=index)
    save_gallery(index=index, settings=settings)
    return index, report


class GallerySync:
    """Keeps one process's index in step with SQL changes made by other workers or the CLI.

    ``refresh`` is cheap when nothing changed (one row read); when ``gallery_revision`` moved it
    reconciles the id sets. Run it from :class:`service.registry.holder.Poller`.
    """

    def __init__(self, *, session_factory: sessionmaker[Session], index: GalleryIndex) -> None:
        self._session_factory = session_factory
        self.index = index
        self._seen_revision: int | None = None
        self._lock = threading.Lock()

    def refresh(self) -> ConsistencyReport | None:
        """Reconcile when the gallery revision changed; returns the repair report, if any."""
        with self._lock, self._session_factory() as session:
            revision = gallery_revision(session)
            if revision == self._seen_revision:
                return None
            report = reconcile(session=session, index=self.index, quiet=True)
            self._seen_revision = revision
            return report


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


def gallery_stats(
    *, session: Session, index: GalleryIndex | None, settings: ServiceSettings | None = None
) -> GalleryStats:
    """Counts, dimension, index type and vectors by source (``legacy`` / ``mapped``)."""
    identities = session.scalar(select(func.count()).select_from(Identity)) or 0
    by_source = {"legacy": 0, "mapped": 0}
    for source, count in session.execute(
        select(Face.source, func.count()).group_by(Face.source)
    ).all():
        by_source[str(source)] = int(count)
    index_type = (
        index.index_type if index is not None else (settings.index_type if settings else "flat")
    )
    return GalleryStats(
        identities=int(identities),
        faces=sum(by_source.values()),
        dim=gallery_dim(session=session, settings=settings),
        index_type=index_type,
        index_ntotal=index.ntotal if index is not None else 0,
        by_source=by_source,
        model_id=gallery_model_id(session=session, settings=settings),
    )


def identities_with_faces(session: Session) -> int:
    """How many identities have at least one face (the searchable identities)."""
    return int(session.scalar(select(func.count(func.distinct(Face.identity_id)))) or 0)


def require_dim(index: GalleryIndex, dim: int) -> None:
    """Refuse query vectors whose dimension differs from the gallery's."""
    if index.dim is not None and index.dim != dim:
        raise InvalidInput(f"query dimension {dim} != gallery dimension {index.dim}")
