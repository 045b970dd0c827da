"""The FAISS gallery index: a cache of ``faces`` keyed by their SQL primary keys.

Inner product on L2-normalised vectors (= cosine). ``flat`` is exact (IndexIDMap2 over
IndexFlatIP, because plain IndexFlat removal shifts positions); ``ivf`` is an IndexIVFFlat that
keeps its own ids; ``hnsw`` cannot remove, so a removal rebuilds the graph from the stored vectors.

Concurrency: searches share a readers lock; adds and removals take it exclusively.
Persistence: ``write_index`` to a temp file in the same directory, then ``os.replace``; a JSON
sidecar records count, max id and a checksum of the id set so a load can be checked against SQL.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from service.errors import ContractError, InvalidInput
from service.vectors import as_float32_matrix

if TYPE_CHECKING:
    from service.settings import ServiceSettings

INDEX_TYPES = ("flat", "ivf", "hnsw")
SIDECAR_SUFFIX = ".json"
# FAISS's rule of thumb: at least ~39 training points per IVF centroid.
IVF_POINTS_PER_LIST = 39


class Hits(NamedTuple):
    """Neighbours of one query, best first; FAISS's -1 padding removed."""

    ids: np.ndarray  # int64 face ids
    scores: np.ndarray  # float32 inner products (cosine)
    # [len(ids), d] stored vectors of those ids, read under the search's lock (with_vectors=True)
    vectors: np.ndarray | None = None


def ids_checksum(ids: Iterable[int]) -> str:
    """sha256 of the sorted int64 ids: equal id sets give equal checksums."""
    arr = np.sort(np.fromiter((int(i) for i in ids), dtype=np.int64))
    return hashlib.sha256(arr.tobytes()).hexdigest()


class _ReadWriteLock:
    """Many concurrent readers (searches) or one writer (add/remove/save).

    Writers take precedence: once one waits, new readers queue behind it, so a steady stream of
    searches cannot starve an enrolment.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writers_waiting = 0
        self._writer: int | None = None
        self._writer_depth = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer != me:  # a writer may search inside its own critical section
                while self._writer is not None or self._writers_waiting:
                    self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._writer_depth += 1
            else:
                self._writers_waiting += 1
                try:
                    while self._writer is not None or self._readers > 0:
                        self._cond.wait()
                finally:
                    self._writers_waiting -= 1
                self._writer, self._writer_depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._writer_depth -= 1
                if self._writer_depth == 0:
                    self._writer = None
                    self._cond.notify_all()


@dataclass(frozen=True)
class IndexParams:
    ivf_nlist: int = 256
    ivf_nprobe: int = 16
    hnsw_m: int = 32
    hnsw_ef_search: int = 64
    hnsw_ef_construction: int = 80

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> IndexParams:
        return cls(
            ivf_nlist=settings.ivf_nlist,
            ivf_nprobe=settings.ivf_nprobe,
            hnsw_m=settings.hnsw_m,
            hnsw_ef_search=settings.hnsw_ef_search,
            hnsw_ef_construction=settings.hnsw_ef_construction,
        )


class GalleryIndex:
    """Thread-safe FAISS index of face vectors keyed by face id.

    ``dim`` may be None for an empty gallery whose dimension is not known yet; the first
    ``add`` fixes it.
    """

    def __init__(
        self,
        *,
        dim: int | None,
        index_type: str = "flat",
        params: IndexParams | None = None,
    ) -> None:
        if index_type not in INDEX_TYPES:
            raise InvalidInput(
                f"unknown index type {index_type!r}; choose {', '.join(INDEX_TYPES)}"
            )
        self.index_type = index_type
        self.params = params or IndexParams()
        self._dim = dim
        self._lock = _ReadWriteLock()
        self._ids: set[int] = set()
        self._index: Any = None  # built lazily (IVF needs training data)

    @classmethod
    def from_settings(cls, *, dim: int | None, settings: ServiceSettings) -> GalleryIndex:
        params = IndexParams.from_settings(settings)
        return cls(dim=dim, index_type=settings.index_type, params=params)

    # ------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        return self._dim

    @property
    def ntotal(self) -> int:
        index = self._index
        return 0 if index is None else int(index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def ids(self) -> set[int]:
        """A copy of the id set held by the index."""
        with self._lock.read():
            return set(self._ids)

    def __contains__(self, face_id: object) -> bool:
        return face_id in self._ids

    def __repr__(self) -> str:
        return f"GalleryIndex(type={self.index_type}, dim={self._dim}, ntotal={self.ntotal})"

    # ------------------------------------------------------------------------------------------
    def _new_faiss_index(self, training: np.ndarray) -> Any:
        import faiss

        assert self._dim is not None
        d, p = self._dim, self.params
        if self.index_type == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        if self.index_type == "hnsw":
            hnsw = faiss.IndexHNSWFlat(d, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = p.hnsw_ef_construction
            hnsw.hnsw.efSearch = p.hnsw_ef_search
            return faiss.IndexIDMap2(hnsw)
        # IVF keeps its own ids and supports removal; IndexIDMap2 over it would desynchronise.
        nlist = max(1, min(p.ivf_nlist, training.shape[0] // IVF_POINTS_PER_LIST))
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(training)
        ivf.nprobe = min(p.ivf_nprobe, nlist)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct() by id
        self._ivf_quantizer = quantizer  # the IVF index does not own it: keep it alive
        return ivf

    def _check(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vectors = as_float32_matrix(vectors, dim=self._dim, name="gallery vectors")
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if ids.shape[0] != vectors.shape[0]:
            raise InvalidInput(f"{ids.shape[0]} ids for {vectors.shape[0]} vectors")
        if len(set(ids.tolist())) != ids.shape[0]:
            raise InvalidInput("duplicate ids in one add")
        if ids.size and int(ids.min()) < 0:
            raise InvalidInput("face ids must be non-negative")
        return ids, vectors

    def add(self, *, ids: Iterable[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Add (or replace: upsert = remove, then add) vectors under ``ids``."""
        ids_arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, np.int64)
        if ids_arr.size == 0:
            return
        with self._lock.write():
            if self._dim is None:
                self._dim = int(np.asarray(vectors).shape[-1])
            ids_arr, vectors = self._check(ids_arr, vectors)
            existing = [i for i in ids_arr.tolist() if i in self._ids]
            if existing:
                self._remove_locked(np.asarray(existing, dtype=np.int64))
            if self._index is None:
                self._index = self._new_faiss_index(vectors)
            self._index.add_with_ids(vectors, ids_arr)
            self._ids.update(ids_arr.tolist())

    def remove(self, *, ids: Iterable[int] | np.ndarray) -> int:
        """Remove ``ids`` (unknown ids are ignored); returns how many were removed."""
        with self._lock.write():
            present = [int(i) for i in ids if int(i) in self._ids]
            if not present:
                return 0
            self._remove_locked(np.asarray(present, dtype=np.int64))
            return len(present)

    def _remove_locked(self, ids: np.ndarray) -> None:
        import faiss

        if self.index_type == "hnsw":
            # HNSW cannot remove: rebuild the graph from the vectors that stay.
            keep_ids, keep_vectors = self._all_locked()
            mask = ~np.isin(keep_ids, ids)
            keep_ids, keep_vectors = keep_ids[mask], keep_vectors[mask]
            self._index = self._new_faiss_index(keep_vectors)
            if keep_ids.size:
                self._index.add_with_ids(keep_vectors, keep_ids)
        else:
            # IVF's hashtable direct map only accepts an IDSelectorArray.
            selector = (
                faiss.IDSelectorArray(ids.shape[0], faiss.swig_ptr(ids))
                if self.index_type == "ivf"
                else faiss.IDSelectorBatch(ids)
            )
            removed = self._index.remove_ids(selector)
            if removed != ids.shape[0]:
                raise RuntimeError(f"FAISS removed {removed} of {ids.shape[0]} ids")
        self._ids.difference_update(ids.tolist())

    def _all_locked(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, vector) held, for rebuilds. Caller holds the lock."""
        if self._index is None or self._index.ntotal == 0:
            return np.zeros(0, np.int64), np.zeros((0, self._dim or 0), np.float32)
        import faiss

        if self.index_type == "ivf":
            ids = np.fromiter(sorted(self._ids), dtype=np.int64)
            vectors = np.vstack([self._index.reconstruct(int(i)) for i in ids])
            return ids, vectors.astype(np.float32)
        # IndexIDMap2: internal order = id_map order; the sub-index reconstructs in bulk.
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vectors = self._index.index.reconstruct_n(0, int(self._index.ntotal))
        return ids, np.asarray(vectors, dtype=np.float32)

    def search(self, vectors: np.ndarray, *, k: int, with_vectors: bool = False) -> list[Hits]:
        """Top-``k`` neighbours per query row, best first, ids = face ids; -1 slots removed.

        ``with_vectors``: also return each hit's stored vector, read under the same lock as the
        search (so a concurrent removal cannot take a hit's vector away in between).
        """
        if k < 1:
            raise InvalidInput("k must be at least 1")
        queries = as_float32_matrix(vectors, dim=self._dim, name="query vectors")
        with self._lock.read():
            index = self._index
            if index is None or index.ntotal == 0:
                empty = Hits(
                    np.zeros(0, np.int64),
                    np.zeros(0, np.float32),
                    np.zeros((0, self._dim or 0), np.float32) if with_vectors else None,
                )
                return [empty for _ in range(queries.shape[0])]
            scores, ids = index.search(queries, min(k, int(index.ntotal)))
            keep = ids >= 0
            held = self._reconstruct_locked(ids[keep]) if with_vectors else None
        out, start = [], 0
        for row_scores, row_ids, row_keep in zip(scores, ids, keep, strict=True):
            n = int(row_keep.sum())
            out.append(
                Hits(
                    row_ids[row_keep].astype(np.int64),
                    row_scores[row_keep].astype(np.float32),
                    None if held is None else held[start : start + n],
                )
            )
            start += n
        return out

    def reconstruct(self, face_id: int) -> np.ndarray:
        """The stored vector of ``face_id`` (KeyError when absent)."""
        with self._lock.read():
            if face_id not in self._ids:
                raise KeyError(face_id)
            return np.asarray(self._index.reconstruct(int(face_id)), dtype=np.float32)

    def reconstruct_many(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """The stored vectors [n, d] of ``ids``, in that order, under one read lock (KeyError
        naming the first id the index does not hold). Works for flat, IVF and HNSW."""
        wanted = np.asarray(
            list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64
        ).reshape(-1)
        with self._lock.read():
            missing = [i for i in wanted.tolist() if i not in self._ids]
            if missing:
                raise KeyError(missing[0])
            return self._reconstruct_locked(wanted)

    def _reconstruct_locked(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of ids the index holds. Caller holds the lock."""
        if ids.size == 0:
            return np.zeros((0, self._dim or 0), np.float32)
        # IndexIDMap2 (flat, hnsw) maps ids through its reverse map; IVF through its direct map.
        out = self._index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
        return np.ascontiguousarray(out, dtype=np.float32)

    # ------------------------------------------------------------------------------------------
    def sidecar(self) -> dict[str, Any]:
        with self._lock.read():
            ids = self._ids
            return {
                "format": 1,
                "index_type": self.index_type,
                "dim": self._dim,
                "ntotal": self.ntotal,
                "count": len(ids),
                "max_id": max(ids) if ids else None,
                "ids_sha256": ids_checksum(ids),
                "saved_at": datetime.now(UTC).isoformat(),
            }

    def save(self, path: str | Path) -> Path:
        """Persist atomically: temp file in the same directory, fsync, ``os.replace``."""
        import faiss

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._lock.write():  # no add/remove between the index bytes and the sidecar
            meta = self.sidecar()
            if self._index is None:
                # Nothing to write; an empty sidecar says "empty gallery" and stays consistent.
                target.unlink(missing_ok=True)
            else:
                tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                faiss.write_index(self._index, str(tmp))
                _fsync(tmp)
                os.replace(tmp, target)
            side = sidecar_path(target)
            tmp_side = side.with_name(f".{side.name}.{os.getpid()}.tmp")
            tmp_side.write_text(json.dumps(meta, indent=2))
            _fsync(tmp_side)
            os.replace(tmp_side, side)
        return target

    @classmethod
    def load(
        cls, path: str | Path, *, params: IndexParams | None = None, index_type: str | None = None
    ) -> GalleryIndex:
        """Read an index written by :meth:`save`; ContractError when it is corrupt or stale."""
        import faiss

        target = Path(path)
        side = sidecar_path(target)
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError) as exc:
            raise ContractError(f"{side}: missing or unreadable index sidecar") from exc
        kind = meta.get("index_type")
        if index_type is not None and kind != index_type:
            raise ContractError(f"{target}: stored index type {kind!r}, configured {index_type!r}")
        gallery = cls(dim=meta.get("dim"), index_type=kind, params=params)
        if meta.get("count", 0) == 0 and not target.exists():
            return gallery
        try:
            index = faiss.read_index(str(target))
        except Exception as exc:
            raise ContractError(f"{target}: unreadable FAISS index ({exc})") from exc
        ids = _ivf_ids(index) if kind == "ivf" else faiss.vector_to_array(index.id_map)
        if int(index.ntotal) != meta.get("ntotal") or ids_checksum(ids) != meta.get("ids_sha256"):
            raise ContractError(f"{target}: index does not match its sidecar (partial write?)")
        if index.d != meta.get("dim"):
            raise ContractError(f"{target}: index dim {index.d} != sidecar dim {meta.get('dim')}")
        # Search-time knobs follow the current settings, not the ones at save time.
        if kind == "ivf":
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
            index.nprobe = min(gallery.params.ivf_nprobe, index.nlist)
        elif kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = gallery.params.hnsw_ef_search
        gallery._index = index
        gallery._ids = set(ids.tolist())
        return gallery


def _ivf_ids(index: Any) -> np.ndarray:
    import faiss

    invlists = index.invlists
    parts = []
    for list_no in range(index.nlist):
        size = invlists.list_size(list_no)
        if size:
            ptr = invlists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(ptr, size).copy())
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def sidecar_path(index_path: str | Path) -> Path:
    p = Path(index_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
