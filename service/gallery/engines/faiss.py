"""The embedded engine: a thread-safe FAISS index of one space's face vectors, keyed by face id.

Concurrency: searches share a readers lock; adds and removals take it exclusively (FAISS CPU
indexes allow concurrent searches, writes need exclusion). Persistence: ``write_index`` to a temp
file in the same directory, then ``os.replace``; a JSON sidecar records the id set's checksum
(so a load is checked against itself) and the change-log position the index reflects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import ContractError, InvalidInput
from service.files import atomic_path, write_text_atomically
from service.gallery.engines.base import DEFAULT_SPACE, Hits, as_id_array
from service.gallery.engines.faiss_build import (
    COMPRESSED_TYPES,
    IndexParams,
    configure_search,
    ids_checksum,
    new_faiss_index,
    outgrown,
    read_sidecar,
    resolve_index_type,
    sidecar_path,
    stored_ids,
)
from service.gallery.engines.idset import IdSet
from service.gallery.engines.locks import ReadWriteLock
from service.vectors import as_float32_matrix

if TYPE_CHECKING:
    from service.settings import ServiceSettings

__all__ = ["FaissStore", "read_sidecar", "sidecar_path"]

SIDECAR_FORMAT = 2


class FaissStore:
    """FAISS vectors of one space. ``dim`` None = unknown until the first ``add``.

    ``index_type`` may be ``auto``: the concrete type is chosen from the first batch's size (a
    rebuild from SQL hands over the whole gallery); :meth:`outgrown` says when to rebuild.
    """

    engine = "faiss"

    def __init__(
        self,
        *,
        dim: int | None,
        index_type: str = "flat",
        params: IndexParams | None = None,
        space: str = DEFAULT_SPACE,
    ) -> None:
        resolve_index_type(index_type, rows=0)  # validates the name
        self.configured_type = index_type
        self.params = params or IndexParams()
        self.space = space
        self._kind: str | None = None if index_type == "auto" else index_type
        self._dim = dim
        self._lock = ReadWriteLock()
        self._ids = IdSet()
        self._deleted: set[int] = set()  # HNSW tombstones: still in the graph, never returned
        self._index: Any = None  # built lazily (IVF needs training data)

    @classmethod
    def from_settings(
        cls, *, dim: int | None, settings: ServiceSettings, space: str = DEFAULT_SPACE
    ) -> FaissStore:
        return cls(
            dim=dim,
            index_type=settings.index_type,
            params=IndexParams.from_settings(settings),
            space=space,
        )

    # ------------------------------------------------------------------------------------------
    @property
    def index_type(self) -> str:
        """The concrete type (``auto`` before the first add resolves it)."""
        return self._kind or self.configured_type

    @property
    def dim(self) -> int | None:
        return self._dim

    @property
    def exact_vectors(self) -> bool:
        """Whether :meth:`reconstruct_many` returns the stored vectors exactly (not PQ codes)."""
        return self.index_type not in COMPRESSED_TYPES

    @property
    def ntotal(self) -> int:
        return len(self._ids)

    def __len__(self) -> int:
        return self.ntotal

    def ids(self) -> set[int]:
        """A copy of the id set (O(n): for consistency checks, not for requests)."""
        with self._lock.read():
            return set(self._ids.to_array().tolist())

    def id_array(self) -> np.ndarray:
        with self._lock.read():
            return self._ids.to_array()

    def contains_many(self, ids: np.ndarray) -> np.ndarray:
        with self._lock.read():
            return self._ids.contains_many(as_id_array(ids))

    def __contains__(self, face_id: object) -> bool:
        with self._lock.read():
            return face_id in self._ids

    def __repr__(self) -> str:
        return f"FaissStore(space={self.space}, type={self.index_type}, ntotal={self.ntotal})"

    def close(self) -> None:
        """Nothing to release (kept for the VectorStore interface)."""

    # ------------------------------------------------------------------------------------------
    def _check(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vectors = as_float32_matrix(vectors, dim=self._dim, name="gallery vectors")
        if ids.shape[0] != vectors.shape[0]:
            raise InvalidInput(f"{ids.shape[0]} ids for {vectors.shape[0]} vectors")
        if np.unique(ids).shape[0] != ids.shape[0]:
            raise InvalidInput("duplicate ids in one add")
        if ids.size and int(ids.min()) < 0:
            raise InvalidInput("face ids must be non-negative")
        return ids, vectors

    def train(self, vectors: np.ndarray, *, rows: int) -> None:
        """Build the empty index for a gallery of ``rows`` vectors (``auto`` picks the type by
        it), IVF types trained on ``vectors`` (a sample of them). Before the first add only."""
        with self._lock.write():
            if self._index is not None:
                raise InvalidInput("train() only before the first add")
            vectors = as_float32_matrix(vectors, dim=self._dim, name="training vectors")
            self._dim = int(vectors.shape[1])
            self._kind = resolve_index_type(self.configured_type, rows=rows)
            self._index = new_faiss_index(
                self._kind, dim=self._dim, training=vectors, params=self.params, rows=rows
            )

    def add(
        self, *, ids: Iterable[int] | np.ndarray, vectors: np.ndarray, replace: bool = False
    ) -> None:
        """Add vectors under ``ids``. An id already held is kept as it is (a face's vector never
        changes and its id is never reused: the writer and the log tail may both add it), or
        replaced with ``replace=True`` (remove, then add)."""
        ids_arr = as_id_array(ids)
        if ids_arr.size == 0:
            return
        with self._lock.write():
            if self._dim is None:
                self._dim = int(np.asarray(vectors).shape[-1])
            ids_arr, vectors = self._check(ids_arr, vectors)
            held = self._ids.contains_many(ids_arr)
            if held.any() and not replace:
                ids_arr, vectors = ids_arr[~held], vectors[~held]
                if ids_arr.size == 0:
                    return
            elif held.any():
                self._remove_locked(ids_arr[held])
            if self._index is None:
                self._kind = resolve_index_type(self.configured_type, rows=ids_arr.shape[0])
                self._index = new_faiss_index(
                    self._kind, dim=self._dim, training=vectors, params=self.params
                )
            if self._deleted and np.isin(ids_arr, np.fromiter(self._deleted, np.int64)).any():
                self._rebuild_graph_locked()  # an HNSW id coming back: drop its old node first
            self._index.add_with_ids(vectors, ids_arr)
            self._ids.add(ids_arr)

    def _rebuild_graph_locked(self) -> None:
        """HNSW: a new graph from the live nodes (tombstones gone). O(n); rare by design."""
        live = self._ids.to_array()
        vectors = self._reconstruct_locked(live)
        self._deleted.clear()
        self._index = new_faiss_index(
            "hnsw", dim=self._dim or 0, training=vectors, params=self.params
        )
        if live.size:
            self._index.add_with_ids(vectors, live)

    def remove(self, *, ids: Iterable[int] | np.ndarray) -> int:
        """Remove ``ids`` (unknown ids are ignored); returns how many were removed."""
        wanted = np.unique(as_id_array(ids))
        with self._lock.write():
            present = wanted[self._ids.contains_many(wanted)]
            if present.size:
                self._remove_locked(present)
            return int(present.size)

    def _remove_locked(self, ids: np.ndarray) -> None:
        import faiss

        if self._kind == "hnsw":
            # HNSW cannot remove: a tombstone hides the node until the next compact().
            self._deleted.update(ids.tolist())
        else:
            # IVF's hashtable direct map only accepts an IDSelectorArray; the compressed
            # types (no map) scan their lists with any selector.
            selector = (
                faiss.IDSelectorArray(ids.shape[0], faiss.swig_ptr(ids))
                if self._kind == "ivf"
                else faiss.IDSelectorBatch(ids)
            )
            removed = self._index.remove_ids(selector)
            if removed != ids.shape[0]:
                raise RuntimeError(f"FAISS removed {removed} of {ids.shape[0]} ids")
        self._ids.discard(ids)

    # ------------------------------------------------------------------------------------------
    def search(self, vectors: np.ndarray, *, k: int, with_vectors: bool = False) -> list[Hits]:
        """Top-``k`` neighbours per query row, best first, ids = face ids; empty slots removed.

        ``with_vectors``: also return each hit's stored vector, read under the same lock as the
        search (so a concurrent removal cannot take a hit's vector away in between).
        """
        if k < 1:
            raise InvalidInput("k must be at least 1")
        queries = as_float32_matrix(vectors, dim=self._dim, name="query vectors")
        with self._lock.read():
            index, total = self._index, self.ntotal
            if index is None or total == 0:
                empty = Hits(
                    np.zeros(0, np.int64),
                    np.zeros(0, np.float32),
                    np.zeros((0, self._dim or 0), np.float32) if with_vectors else None,
                )
                return [empty for _ in range(queries.shape[0])]
            scores, ids = index.search(queries, min(k, total), **self._search_kwargs())
            keep = ids >= 0
            if with_vectors and not self.exact_vectors:
                raise InvalidInput(f"a {self.index_type} index keeps no vectors: read SQL")
            held = self._reconstruct_locked(ids[keep]) if with_vectors else None
        if held is None and bool(keep.all()):  # no empty slot (the usual case): row views
            return [Hits(i, s) for s, i in zip(scores, ids, strict=True)]
        out, start = [], 0  # (FAISS returns int64 ids and float32 scores: no conversion)
        for row_scores, row_ids, row_keep in zip(scores, ids, keep, strict=True):
            n = int(row_keep.sum())
            vectors = None if held is None else held[start : start + n]
            out.append(Hits(row_ids[row_keep], row_scores[row_keep], vectors))
            start += n
        return out

    def _search_kwargs(self) -> dict[str, Any]:
        if not self._deleted:
            return {}
        import faiss

        # Tombstones filtered inside the graph walk (IndexIDMap2 translates the selector).
        deleted = np.fromiter(self._deleted, np.int64)
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(deleted))
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=self.params.hnsw_ef_search)
        params.referenced = (selector, deleted)  # keep them alive through the call
        return {"params": params}

    def reconstruct(self, face_id: int) -> np.ndarray:
        """The stored vector of ``face_id`` (KeyError when absent)."""
        return self.reconstruct_many([face_id])[0]

    def reconstruct_many(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """The stored vectors [n, d] of ``ids``, in that order, under one read lock (KeyError
        naming the first id the index does not hold). The compressed types keep no vectors:
        read them from SQL (``exact_vectors`` is False)."""
        if not self.exact_vectors:
            raise InvalidInput(f"a {self.index_type} index keeps no vectors: read them from SQL")
        wanted = as_id_array(ids)
        with self._lock.read():
            present = self._ids.contains_many(wanted)
            if not present.all():
                raise KeyError(int(wanted[~present][0]))
            return self._reconstruct_locked(wanted)

    def _reconstruct_locked(self, ids: np.ndarray) -> np.ndarray:
        if ids.size == 0:
            return np.zeros((0, self._dim or 0), np.float32)
        # IndexIDMap2 (flat, hnsw) maps ids through its reverse map; IVF through its direct map.
        out = self._index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
        return np.ascontiguousarray(out, dtype=np.float32)

    # ------------------------------------------------------------------------------------------
    def outgrown(self) -> str:
        """Why this index should be rebuilt now ('' when it should not): an ``auto`` gallery
        past a size threshold, IVF lists trained for a much smaller gallery, HNSW tombstones
        past ``hnsw_rebuild_fraction``."""
        with self._lock.read():
            if self._index is None:
                return ""
            if self._deleted and len(self._deleted) > self.params.hnsw_rebuild_fraction * max(
                1, int(self._index.ntotal)
            ):
                return f"{len(self._deleted)} HNSW tombstones: rebuild the graph"
            return outgrown(
                self.index_type,
                self._index,
                configured=self.configured_type,
                rows=self.ntotal,
                params=self.params,
            )

    def sidecar(self, *, sync: dict[str, Any] | None = None) -> dict[str, Any]:
        with self._lock.read():
            ids = self._ids.to_array()
            return {
                "format": SIDECAR_FORMAT,
                "engine": self.engine,
                "space": self.space,
                "index_type": self.index_type,
                "configured_type": self.configured_type,
                "dim": self._dim,
                "count": int(ids.size),
                "max_id": int(ids[-1]) if ids.size else None,
                "ids_sha256": ids_checksum(ids),
                "deleted": sorted(self._deleted),
                "sync": sync or {},
                "saved_at": datetime.now(UTC).isoformat(),
            }

    def save(self, path: str | Path, *, sync: dict[str, Any] | None = None) -> Path:
        """Persist atomically: temp file in the same directory, fsync, ``os.replace``; the
        sidecar last (a reader checks the index against it). ``sync``: the change-log position."""
        import faiss

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._lock.write():  # no add/remove between the index bytes and the sidecar
            meta = self.sidecar(sync=sync)
            if self._index is None:
                target.unlink(missing_ok=True)  # an empty sidecar says "empty gallery"
            else:
                with atomic_path(target, fsync=True) as tmp:
                    faiss.write_index(self._index, str(tmp))
            write_text_atomically(sidecar_path(target), json.dumps(meta, indent=2), fsync=True)
        return target

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        params: IndexParams | None = None,
        index_type: str | None = None,
        space: str | None = None,
    ) -> FaissStore:
        """Read an index written by :meth:`save`; ContractError when it is corrupt, of another
        configured type or of another space. The sidecar's ``sync`` is in ``loaded_sync``."""
        import faiss

        target = Path(path)
        meta = read_sidecar(target)
        kind, configured = meta.get("index_type"), meta.get("configured_type")
        if index_type == "auto" and kind == resolve_index_type("auto", rows=meta.get("count", 0)):
            configured = "auto"  # e.g. a flat file from before ``auto``: what auto would build
        if index_type is not None and index_type not in (kind, configured):
            raise ContractError(f"{target}: stored index type {kind!r}, configured {index_type!r}")
        if space is not None and meta.get("space", space) != space:
            raise ContractError(f"{target}: index of space {meta.get('space')!r}, not {space!r}")
        store = cls(
            dim=meta.get("dim"),
            index_type=index_type or configured or kind,
            params=params,
            space=meta.get("space", space or DEFAULT_SPACE),
        )
        store.loaded_sync = dict(meta.get("sync") or {})
        if meta.get("count", 0) == 0 and not target.exists():
            return store
        try:
            index = faiss.read_index(str(target))
        except Exception as exc:
            raise ContractError(f"{target}: unreadable FAISS index ({exc})") from exc
        deleted = {int(i) for i in meta.get("deleted", [])}
        ids = stored_ids(kind, index)
        if deleted:
            ids = ids[~np.isin(ids, np.fromiter(deleted, np.int64))]
        if ids.size != meta.get("count") or ids_checksum(ids) != meta.get("ids_sha256"):
            raise ContractError(f"{target}: index does not match its sidecar (partial write?)")
        if index.d != meta.get("dim"):
            raise ContractError(f"{target}: index dim {index.d} != sidecar dim {meta.get('dim')}")
        configure_search(index, kind=kind, params=store.params)
        store._kind, store._index, store._ids, store._deleted = kind, index, IdSet(ids), deleted
        return store

    loaded_sync: dict[str, Any] = {}  # noqa: RUF012 (replaced per instance by load())
