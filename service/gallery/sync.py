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
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Face
from service.db.registry_state import compacted_through
from service.gallery.changes import ChangeFeed, compact_changes
from service.gallery.engines.base import VectorStore, space_slug
from service.gallery.engines.faiss import FaissStore
from service.gallery.engines.faiss_build import (
    IVF_TRAIN_POINTS_PER_LIST,
    IVF_TYPES,
    ideal_nlist,
    resolve_index_type,
)
from service.gallery.spaces import in_space, old_space, space_face_count, store_space
from service.gallery.store import (
    ConsistencyReport,
    check_consistency,
    iter_face_vectors,
    reconcile,
    sample_face_vectors,
)

if TYPE_CHECKING:
    from service.settings import ServiceSettings

__all__ = ["GallerySync", "fill_from_sql", "index_path", "new_store", "old_space"]
log = logging.getLogger(__name__)
COMPACT_EVERY_S = 60.0
MAINTAIN_EVERY_S = 30.0


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


def fill_from_sql(
    *, store: VectorStore, session: Session, settings: ServiceSettings, old: str | None = None
) -> None:
    """Add every face of the store's space in SQL to an empty store (streamed; IVF trained on
    a strided sample). ``old``: the old space's key (read from SQL when not given)."""
    old = old or old_space(session=session, settings=settings)
    where = in_space(store.space, old=old)
    if isinstance(store, FaissStore):
        rows = space_face_count(session, store.space, old=old)
        kind = resolve_index_type(settings.index_type, rows=rows)
        if rows and kind in IVF_TYPES:
            wanted = ideal_nlist(rows, store.params) * IVF_TRAIN_POINTS_PER_LIST
            sample = sample_face_vectors(session, rows=rows, wanted=wanted, where=where)
            store.train(sample, rows=rows)
    for ids, vectors in iter_face_vectors(session, where=where):
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

    def store(self, space: str) -> VectorStore | None:
        """The store of ``space`` (None while the space has no face here)."""
        return self.stores.get(space)

    def where(self, space: str) -> Any:
        """SQL filter: the faces of ``space``."""
        return in_space(space, old=self.primary_space)

    @staticmethod
    def where_for(space: str, *, old: str) -> Any:
        return in_space(space, old=old)

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

    def _apply(
        self,
        session: Session,
        face_ids: list[int],
        *,
        stores: dict[str, VectorStore] | None = None,
    ) -> None:
        """Make the stores agree with SQL for ``face_ids`` (order-free: each entry re-reads the
        face's current state; faces are immutable and their ids never reused). A face of a
        space with no store yet gets a new store (unless ``stores`` is given: a rebuild)."""
        lazily = stores is None
        stores = self.stores if stores is None else stores
        wanted = np.unique(np.asarray(face_ids, np.int64))
        by_space: dict[str, list[int]] = {}
        for start in range(0, wanted.size, 5000):
            part = wanted[start : start + 5000].tolist()
            for face_id, space, source in session.execute(
                select(Face.id, Face.space, Face.source).where(Face.id.in_(part))
            ).all():
                key = store_space(space, source, old=self.primary_space)
                by_space.setdefault(key, []).append(int(face_id))
        present = np.asarray(sorted(i for ids in by_space.values() for i in ids), np.int64)
        gone = wanted[~np.isin(wanted, present)]
        for store in stores.values():  # a removed face leaves every space
            if gone.size:
                store.remove(ids=gone)
        for space, ids in by_space.items():
            store = stores.get(space)
            if store is None and not lazily:
                continue
            if store is None:
                store = stores[space] = new_store(settings=self.settings, space=space, dim=None)
            ids_array = np.asarray(sorted(ids), np.int64)
            ids_array = ids_array[~store.contains_many(ids_array)]
            for found, vectors in iter_face_vectors(session, ids=ids_array.tolist()):
                store.add(ids=found, vectors=vectors)

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
        """Rebuild each store that outgrew its index off to the side; swap it in."""
        reasons = []
        for space in list(self.stores):
            reason = getattr(self.stores[space], "outgrown", lambda: "")()
            if reason:
                log.info("rebuilding the gallery index of space %s: %s", space, reason)
                self._rebuild_space(space)
                reasons.append(reason)
        if reasons:
            self.save()
        return "; ".join(reasons)

    def _rebuild_space(self, space: str) -> None:
        with self._session_factory() as session:
            feed = ChangeFeed.at_current_position(session)
            store = new_store(settings=self.settings, space=space, dim=None)
            fill_from_sql(
                store=store, session=session, settings=self.settings, old=self.primary_space
            )
        with self._lock, self._session_factory() as session:
            # What changed while it was being built. The other stores stay at ``self.feed``:
            # entries it re-reads later are applied again, harmlessly (order-free, idempotent).
            while entries := feed.poll(session):
                self._apply(session, [f for _, f in entries], stores={space: store})
            self.stores[space] = store

    def _resync_all(self, session: Session) -> None:
        """Too far behind the log: compare every store's ids with SQL and repair the difference
        (a Milvus collection is shared by the replicas: it is repaired, never dropped)."""
        feed = ChangeFeed.at_current_position(session)
        for space, store in self.stores.items():
            reconcile(session=session, index=store, where=self.where(space))
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
        """Full comparison of every store's ids with SQL's (O(n): the poller runs it every
        ``gallery_check_seconds``; /readyz and stats compare counts only). Applies the log first
        so a change committed a moment ago is not reported as a difference. Returns the old
        space's report, or the first inconsistent one."""
        self.refresh()
        reports = {}
        with self._lock, self._session_factory() as session:
            for space, store in self.stores.items():
                reports[space] = check_consistency(
                    session=session, index=store, where=self.where(space)
                )
        report = next((r for r in reports.values() if not r.consistent), None)
        report = report or reports[self.primary_space]
        self.last_check, self.last_check_at = report, datetime.now(UTC)
        if not report.consistent:
            log.warning("gallery index vs SQL: %s", report.detail)
        return report

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
