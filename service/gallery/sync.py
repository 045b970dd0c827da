"""This process's vector stores, kept in step with SQL through the face change log.

:func:`open_gallery` loads the persisted index and tails the log from the position its sidecar
records (O(changes since), not O(gallery)); it rebuilds from SQL when the file is missing,
corrupt, of another type or space, or when the log was compacted past that position (a replica
too far behind). :class:`GallerySync` then polls the log (:meth:`GallerySync.refresh`, from a
:class:`service.threads.Poller`), compacts it now and then, and rebuilds a store off to
the side when it has outgrown its index (``auto`` type thresholds, IVF lists, HNSW tombstones).
Writers in this process also write their own faces straight into the store after their SQL
commit, so they are searchable here at once; the log entry then finds nothing left to do.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from service.db.registry_state import compacted_through
from service.errors import ContractError
from service.gallery.changes import ChangeFeed, compact_changes
from service.gallery.engines.base import DEFAULT_SPACE, VectorStore, space_slug
from service.gallery.engines.faiss import FaissStore, sidecar_path
from service.gallery.engines.faiss_build import (
    IVF_TRAIN_POINTS_PER_LIST,
    IVF_TYPES,
    IndexParams,
    ideal_nlist,
    resolve_index_type,
)
from service.gallery.store import (
    ConsistencyReport,
    check_consistency,
    count_report,
    gallery_dim,
    gallery_model_id,
    iter_face_vectors,
    reconcile,
    sample_face_vectors,
    sql_face_count,
)

if TYPE_CHECKING:
    from service.settings import ServiceSettings

log = logging.getLogger(__name__)
COMPACT_EVERY_S = 60.0
MAINTAIN_EVERY_S = 30.0


def old_space(*, session: Session, settings: ServiceSettings) -> str:
    """The key of the old model's space: its model id (``default`` while none is recorded)."""
    return gallery_model_id(session=session, settings=settings) or DEFAULT_SPACE


def index_path(settings: ServiceSettings, *, space: str, primary: bool) -> Path:
    """FAISS file of a space: ``index_file`` for the old space, a sibling for the others."""
    path = settings.index_file
    return path if primary else path.with_name(f"{path.stem}.{space_slug(space)}{path.suffix}")


def milvus_sync_path(settings: ServiceSettings, *, space: str) -> Path:
    """Where a replica keeps its log position for a Milvus collection (the data is in Milvus)."""
    return settings.data_dir / f"milvus-{space_slug(space)}.sync.json"


def new_store(*, settings: ServiceSettings, space: str, dim: int | None) -> VectorStore:
    if settings.vector_store == "milvus":
        from service.gallery.engines.milvus import MilvusStore

        return MilvusStore.from_settings(dim=dim, settings=settings, space=space)
    return FaissStore.from_settings(dim=dim, settings=settings, space=space)


def fill_from_sql(*, store: VectorStore, session: Session, settings: ServiceSettings) -> None:
    """Add every face in SQL to an empty store (streamed; IVF trained on a strided sample)."""
    if isinstance(store, FaissStore):
        rows = sql_face_count(session)
        kind = resolve_index_type(settings.index_type, rows=rows)
        if rows and kind in IVF_TYPES:
            wanted = ideal_nlist(rows, store.params) * IVF_TRAIN_POINTS_PER_LIST
            store.train(sample_face_vectors(session, rows=rows, wanted=wanted), rows=rows)
    for ids, vectors in iter_face_vectors(session):
        store.add(ids=ids, vectors=vectors)


class GallerySync:
    """The stores of this process (one per space) and their position in the change log."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        settings: ServiceSettings,
        stores: dict[str, VectorStore],
        primary_space: str,
        feed: ChangeFeed,
    ) -> None:
        self._session_factory = session_factory
        self.settings = settings
        self.stores = stores
        self.primary_space = primary_space
        self.feed = feed
        self._lock = threading.RLock()
        self._last_compact = self._last_maintain = time.monotonic()
        self._last_check = float("-inf")
        self.applied_total = 0
        self.last_check: ConsistencyReport | None = None  # the last full id comparison
        self.last_check_at: datetime | None = None

    @classmethod
    def of_one_space(
        cls,
        *,
        session_factory: sessionmaker[Session],
        settings: ServiceSettings,
        store: VectorStore,
        feed: ChangeFeed,
    ) -> GallerySync:
        """Today's gallery: the old model's space only (its store's ``space``)."""
        return cls(
            session_factory=session_factory,
            settings=settings,
            stores={store.space: store},
            primary_space=store.space,
            feed=feed,
        )

    @property
    def primary(self) -> VectorStore:
        """The old model's store (read once per request: a rebuild swaps it)."""
        return self.stores[self.primary_space]

    # -- tailing -------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Apply every log entry not applied yet; returns how many entries were read. Resyncs
        (full id comparison) when the log was compacted past this replica's position."""
        with self._lock, self._session_factory() as session:
            if self.feed.watermark < compacted_through(session):
                log.warning("gallery index too far behind the change log: resynchronising")
                self._resync_all(session)
                return 0
            read, polled_again = 0, False
            while True:
                entries = self.feed.poll(session)
                if entries:
                    self._apply(session, [face_id for _, face_id in entries])
                read += len(entries)
                if len(entries) < 1000 and not (self.feed.gaps and not polled_again):
                    break  # caught up (once more when gaps were found: the second look
                polled_again = True  # can give up those no transaction can fill any more)
            self.applied_total += read
            return read

    def _apply(self, session: Session, face_ids: list[int]) -> None:
        """Make the stores agree with SQL for ``face_ids`` (order-free: each entry re-reads the
        face's current state; faces are immutable and their ids never reused)."""
        wanted = np.unique(np.asarray(face_ids, np.int64))
        found_ids, found_vectors = [], []
        for ids, vectors in iter_face_vectors(session, ids=wanted.tolist()):
            found_ids.append(ids)
            found_vectors.append(vectors)
        present = np.concatenate(found_ids) if found_ids else np.zeros(0, np.int64)
        gone = wanted[~np.isin(wanted, present)]
        for store in self.stores.values():  # a removed face leaves every space
            if gone.size:
                store.remove(ids=gone)
        if present.size:
            # Routing by space arrives with faces.space (progressive migration); today every
            # face is in the old model's space.
            store = self.primary
            vectors = np.vstack(found_vectors)
            missing = ~store.contains_many(present)
            if missing.any():
                store.add(ids=present[missing], vectors=vectors[missing])

    # -- maintenance ---------------------------------------------------------------------------
    def maintain(self) -> None:
        """Poller task: refresh, compact the log every minute, rebuild an outgrown index."""
        self.refresh()
        now = time.monotonic()
        if now - self._last_compact >= COMPACT_EVERY_S:
            self._last_compact = now
            with self._session_factory() as session:
                removed = compact_changes(session, keep=self.settings.change_log_retention)
            if removed:
                log.info("face change log: %d old entries compacted", removed)
        if now - self._last_maintain >= MAINTAIN_EVERY_S:
            self._last_maintain = now
            self.rebuild_if_outgrown()
        every = self.settings.gallery_check_seconds
        if every > 0 and now - self._last_check >= every:
            self._last_check = now
            self.check()

    def rebuild_if_outgrown(self) -> str:
        """Rebuild the primary store off to the side when it outgrew its index; swap it in."""
        reason = getattr(self.primary, "outgrown", lambda: "")()
        if not reason:
            return ""
        log.info("rebuilding the gallery index: %s", reason)
        with self._session_factory() as session:
            feed = ChangeFeed.at_current_position(session)
            store = new_store(settings=self.settings, space=self.primary_space, dim=None)
            fill_from_sql(store=store, session=session, settings=self.settings)
        with self._lock, self._session_factory() as session:
            while entries := feed.poll(session):  # what changed while it was being built
                self._apply_to(store, session, [f for _, f in entries])
            self.stores[self.primary_space], self.feed = store, feed
        self.save()
        return reason

    def _apply_to(self, store: VectorStore, session: Session, face_ids: list[int]) -> None:
        stores, primary = self.stores, self.primary_space
        self.stores = {primary: store}
        try:
            self._apply(session, face_ids)
        finally:
            self.stores = stores

    def _resync_all(self, session: Session) -> None:
        """Too far behind the log: compare every store's ids with SQL and repair the difference
        (a Milvus collection is shared by the replicas: it is repaired, never dropped)."""
        feed = ChangeFeed.at_current_position(session)
        for store in self.stores.values():
            reconcile(session=session, index=store)
        self.feed = feed

    # -- persistence and checks ----------------------------------------------------------------
    def save(self) -> None:
        """Persist each store with the log position it reflects (under the sync lock)."""
        with self._lock:
            state = self.feed.state()
            for space, store in self.stores.items():
                if isinstance(store, FaissStore):
                    primary = space == self.primary_space
                    store.save(index_path(self.settings, space=space, primary=primary), sync=state)
                else:
                    path = milvus_sync_path(self.settings, space=space)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps({"collection": store.collection, "sync": state}))

    def check(self) -> ConsistencyReport:
        """Full comparison of the primary store's ids with SQL's (O(n): the poller runs it every
        ``gallery_check_seconds``; /readyz and stats compare counts only). Applies the log first
        so a change committed a moment ago is not reported as a difference."""
        self.refresh()
        with self._lock, self._session_factory() as session:
            report = check_consistency(session=session, index=self.primary)
        self.last_check, self.last_check_at = report, datetime.now(UTC)
        if not report.consistent:
            log.warning("gallery index vs SQL: %s", report.detail)
        return report

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


def _load_store(
    *, settings: ServiceSettings, space: str, session: Session
) -> tuple[VectorStore | None, dict[str, Any], str]:
    """(store, saved sync state, reason it could not be loaded)."""
    dim = gallery_dim(session=session, settings=settings)
    if settings.vector_store == "milvus":
        store = new_store(settings=settings, space=space, dim=dim)
        if not getattr(store, "existed", True):
            store.close()
            return None, {}, f"no Milvus collection {getattr(store, 'collection', space)}"
        path = milvus_sync_path(settings, space=space)
        try:
            saved = json.loads(path.read_text()).get("sync", {})
        except (OSError, ValueError):
            saved = {}
        return store, saved, ""
    path = index_path(settings, space=space, primary=True)
    if not (path.exists() or sidecar_path(path).exists()):
        return None, {}, "no index file"
    params = IndexParams.from_settings(settings)
    try:
        store = FaissStore.load(path, params=params, index_type=settings.index_type, space=space)
    except ContractError as exc:
        return None, {}, str(exc)
    if store.dim is not None and dim is not None and store.dim != dim:
        return None, {}, f"index dim {store.dim} != gallery dim {dim}"
    return store, store.loaded_sync, ""


def open_gallery(
    *, session_factory: sessionmaker[Session], settings: ServiceSettings
) -> tuple[GallerySync, ConsistencyReport]:
    """This process's stores, agreeing with SQL: loaded + tailed from the saved log position,
    repaired by a full id comparison when there is no usable position, or rebuilt; then saved.
    The report says what was found before any repair (``repaired``/``rebuilt``: what was done).
    """
    with session_factory() as session:
        space = old_space(session=session, settings=settings)
        store, saved, reason = _load_store(settings=settings, space=space, session=session)
        low = compacted_through(session)
        if store is not None and int(saved.get("watermark", -1)) >= low:
            feed = ChangeFeed.from_state(saved)  # tail from here: O(changes since the save)
            report = count_report(session=session, index=store)
        elif store is not None:
            # No position (an older index file, a new replica of a Milvus cluster) or the log
            # was compacted past it: compare the id sets once, then tail from now on.
            feed = ChangeFeed.at_current_position(session)
            report = reconcile(session=session, index=store)
        else:
            log.warning("building the gallery index from SQL: %s", reason)
            feed = ChangeFeed.at_current_position(session)
            store = new_store(settings=settings, space=space, dim=None)
            fill_from_sql(store=store, session=session, settings=settings)
            report = ConsistencyReport(
                sql_count=store.ntotal,
                index_count=0,
                missing_in_index=store.ntotal,
                extra_in_index=0,
                rebuilt=True,
            )
    sync = GallerySync.of_one_space(
        session_factory=session_factory, settings=settings, store=store, feed=feed
    )
    applied = sync.refresh()
    if applied or report.rebuilt or report.repaired or not saved:
        sync.save()  # a 10M-vector index is ~1 GB: rewritten only when something changed
    return sync, report


def rebuild_gallery(
    *, session_factory: sessionmaker[Session], settings: ServiceSettings
) -> ConsistencyReport:
    """Build the old space's store from SQL alone and save it with its log position: the repair
    path for both engines (FAISS: a new index file; Milvus: the collection is dropped and
    refilled, so every replica searches the rebuilt one). Returns the full comparison after."""
    with session_factory() as session:
        space = old_space(session=session, settings=settings)
        feed = ChangeFeed.at_current_position(session)
        store = new_store(settings=settings, space=space, dim=None)
        if hasattr(store, "drop"):
            store.drop()
        fill_from_sql(store=store, session=session, settings=settings)
    sync = GallerySync.of_one_space(
        session_factory=session_factory, settings=settings, store=store, feed=feed
    )
    try:
        sync.refresh()
        sync.save()
        return sync.check()
    finally:
        sync.close()


def load_gallery_store(
    *, session_factory: sessionmaker[Session], settings: ServiceSettings
) -> VectorStore | None:
    """The persisted store as it is (no tailing, no repair, nothing written): for ``stats``."""
    with session_factory() as session:
        space = old_space(session=session, settings=settings)
        store, _, _ = _load_store(settings=settings, space=space, session=session)
    return store
