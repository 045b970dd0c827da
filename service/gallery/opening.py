"""Opening this process's vector stores (one per embedding space) in step with SQL.

:func:`open_gallery` loads each space's persisted index and tails the log from the position
the old space's sidecar records (O(changes since), not O(gallery)); a space whose file is
missing, corrupt, of another type or space, or saved at another position is rebuilt from SQL
or repaired by a full id comparison. :func:`rebuild_gallery` rebuilds every space from SQL.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from service.db.registry_state import compacted_through
from service.errors import ContractError
from service.gallery.changes import ChangeFeed
from service.gallery.engines.base import VectorStore
from service.gallery.engines.faiss import FaissStore, sidecar_path
from service.gallery.engines.faiss_build import IndexParams
from service.gallery.spaces import native_spaces, old_space, space_dim, space_face_count
from service.gallery.store import ConsistencyReport, count_report, reconcile
from service.gallery.sync import (
    GallerySync,
    fill_from_sql,
    index_path,
    milvus_sync_path,
    new_store,
)

if TYPE_CHECKING:
    from service.settings import ServiceSettings

log = logging.getLogger(__name__)


def known_spaces(session: Session, *, old: str) -> list[str]:
    """The old space first, then every space the counters say holds native faces (O(1))."""
    return [old, *(s for s in native_spaces(session) if s != old)]


def _load_store(
    *, settings: ServiceSettings, space: str, old: str, session: Session
) -> tuple[VectorStore | None, dict[str, Any], str]:
    """(store, saved sync state, reason it could not be loaded)."""
    dim = space_dim(session, space, old=old)
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
    path = index_path(settings, space=space, primary=space == old)
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


def _open_space(
    *, settings: ServiceSettings, session: Session, space: str, old: str, feed: ChangeFeed | None
) -> tuple[VectorStore, ConsistencyReport, dict[str, Any]]:
    """One space's store agreeing with SQL at ``feed`` (None: this is the first space opened;
    its own saved position is used when it is still in the log)."""
    store, saved, reason = _load_store(settings=settings, space=space, old=old, session=session)
    low = compacted_through(session)
    usable = store is not None and int(saved.get("watermark", -1)) >= low
    same = feed is None or saved == feed.state()
    where = GallerySync.where_for(space, old=old)
    if store is not None and usable and same:
        count = space_face_count(session, space, old=old)
        return store, count_report(session=session, index=store, sql_count=count), saved
    if store is not None:
        # No position (an older index file, a new replica of a Milvus cluster), the log was
        # compacted past it, or another space's position: compare the id sets once.
        return store, reconcile(session=session, index=store, where=where), {}
    log.warning("building the gallery index of space %s from SQL: %s", space, reason)
    store = new_store(settings=settings, space=space, dim=None)
    fill_from_sql(store=store, session=session, settings=settings, old=old)
    report = ConsistencyReport(
        sql_count=store.ntotal,
        index_count=0,
        missing_in_index=store.ntotal,
        extra_in_index=0,
        rebuilt=True,
    )
    return store, report, {}


def open_gallery(
    *, session_factory: sessionmaker[Session], settings: ServiceSettings
) -> tuple[GallerySync, ConsistencyReport]:
    """This process's stores, agreeing with SQL: loaded + tailed from the saved log position,
    repaired by a full id comparison when there is no usable position, or rebuilt; then saved.
    The report (the old space's) says what was found before any repair."""
    stores: dict[str, VectorStore] = {}
    changed = False
    with session_factory() as session:
        old = old_space(session=session, settings=settings)
        feed: ChangeFeed | None = None
        for space in known_spaces(session, old=old):
            if feed is None:
                position = ChangeFeed.at_current_position(session)
            store, report, saved = _open_space(
                settings=settings, session=session, space=space, old=old, feed=feed
            )
            if feed is None:
                first_report = report
                feed = ChangeFeed.from_state(saved) if saved else position
            stores[space] = store
            changed = changed or report.rebuilt or report.repaired or not saved
    assert feed is not None
    sync = GallerySync(
        session_factory=session_factory,
        settings=settings,
        stores=stores,
        primary_space=old,
        feed=feed,
    )
    if sync.refresh() or changed:
        sync.save()  # a 10M-vector index is ~1 GB: rewritten only when something changed
    return sync, first_report


def rebuild_gallery(
    *, session_factory: sessionmaker[Session], settings: ServiceSettings
) -> ConsistencyReport:
    """Build every space's store from SQL alone and save it with its log position: the repair
    path for both engines (FAISS: new index files; Milvus: the collections are dropped and
    refilled, so every replica searches the rebuilt ones). Returns the full comparison after."""
    stores: dict[str, VectorStore] = {}
    with session_factory() as session:
        old = old_space(session=session, settings=settings)
        feed = ChangeFeed.at_current_position(session)
        for space in known_spaces(session, old=old):
            store = new_store(settings=settings, space=space, dim=None)
            if hasattr(store, "drop"):
                store.drop()
            fill_from_sql(store=store, session=session, settings=settings, old=old)
            stores[space] = store
    sync = GallerySync(
        session_factory=session_factory,
        settings=settings,
        stores=stores,
        primary_space=old,
        feed=feed,
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
    """The old space's persisted store as it is (no tailing, no repair, nothing written)."""
    with session_factory() as session:
        old = old_space(session=session, settings=settings)
        store, _, _ = _load_store(settings=settings, space=old, old=old, session=session)
    return store
