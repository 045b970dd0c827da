"""FAISS index construction for the gallery: index types, the ``auto`` choice per gallery size,
IVF list counts, and the sidecar that checks a persisted index against itself.

Types: ``flat`` (exact; IndexIDMap2 over IndexFlatIP because plain IndexFlat removal shifts
positions), ``ivf`` (IndexIVFFlat: exact scores within the probed lists), ``ivfsq`` (IVF + 6-bit
scalar quantiser of the residuals: 0.20x the raw float32 memory with its ids at 128-d),
``ivfpq`` (IVF + product quantiser, ``ivfpq_m`` bytes a code), ``hnsw`` (IndexIDMap2 over
IndexHNSWFlat; removals are tombstones filtered at search time, the graph is rebuilt when they
pass a fraction). The compressed types keep no id -> vector map (it would cost more memory than
the codes): their removals scan the lists, and stored vectors are read from SQL. ``auto`` picks
flat / ivf / ivfsq by gallery size (bench/gallery_scale.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import ContractError, InvalidInput

if TYPE_CHECKING:
    from service.settings import ServiceSettings

INDEX_TYPES = ("flat", "ivf", "ivfsq", "ivfpq", "hnsw")
IVF_TYPES = ("ivf", "ivfsq", "ivfpq")
COMPRESSED_TYPES = ("ivfsq", "ivfpq")
# FAISS's rule of thumb: at least ~39 training points per IVF centroid; more buys little.
IVF_POINTS_PER_LIST = 39
IVF_TRAIN_POINTS_PER_LIST = 40
# Many lists: an HNSW graph over the centroids finds the nearest lists (a flat scan costs more).
HNSW_QUANTIZER_FROM_NLIST = 4096
# k-means over more lists costs too much on a small machine (8192 lists x 40 points x 10 rounds:
# ~10 min on one core); past it, more probes (ivf_nprobe) buy the recall instead.
AUTO_MAX_NLIST = 8192
# ``auto``: exact search while it is cheap, IVF-flat while raw vectors fit comfortably, then SQ.
AUTO_IVF_FROM = 50_000
AUTO_IVFSQ_FROM = 500_000
# An IVF index trained for n vectors is retrained once the gallery's ideal nlist is 4x its own.
IVF_RETRAIN_FACTOR = 4
_RANK = {"flat": 0, "ivf": 1, "ivfsq": 2, "ivfpq": 2, "hnsw": 1}


@dataclass(frozen=True)
class IndexParams:
    """Build and search knobs. ``ivf_nlist``/``ivfpq_m`` None = chosen from size / dim."""

    ivf_nlist: int | None = None
    ivf_nprobe: int | None = None
    ivfpq_m: int | None = None
    hnsw_m: int = 32
    hnsw_ef_search: int = 64
    hnsw_ef_construction: int = 80
    hnsw_rebuild_fraction: float = 0.1

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> IndexParams:
        return cls(
            ivf_nlist=settings.ivf_nlist,
            ivf_nprobe=settings.ivf_nprobe,
            ivfpq_m=settings.ivfpq_m,
            hnsw_m=settings.hnsw_m,
            hnsw_ef_search=settings.hnsw_ef_search,
            hnsw_ef_construction=settings.hnsw_ef_construction,
        )


def resolve_index_type(configured: str, *, rows: int) -> str:
    """The concrete type for a gallery of ``rows`` vectors (``auto`` decides by size)."""
    if configured != "auto":
        if configured not in INDEX_TYPES:
            raise InvalidInput(f"unknown index type {configured!r}; choose auto or {INDEX_TYPES}")
        return configured
    if rows >= AUTO_IVFSQ_FROM:
        return "ivfsq"
    if rows >= AUTO_IVF_FROM:
        return "ivf"
    return "flat"


def ideal_nlist(rows: int, params: IndexParams) -> int:
    """Lists for ``rows`` vectors: ~4 sqrt(n) as a power of two up to 8192, at most n / 39
    (trainable)."""
    cap = max(1, rows // IVF_POINTS_PER_LIST)
    if params.ivf_nlist is not None:
        return max(1, min(params.ivf_nlist, cap))
    target = 2 ** round(math.log2(max(1.0, 4.0 * math.sqrt(max(rows, 1)))))
    return max(1, min(target, cap, AUTO_MAX_NLIST))


def search_nprobe(nlist: int, params: IndexParams) -> int:
    """Lists probed a query: ``ivf_nprobe``, or max(32, nlist / 128) (bench/gallery_scale.py:
    recall@1 0.960 at 1M rows with 4,096 lists and 32 probes, 0.932 at 10M with 8,192 and 64)."""
    wanted = params.ivf_nprobe if params.ivf_nprobe is not None else max(32, nlist // 128)
    return max(1, min(wanted, nlist))


def pq_m(dim: int, params: IndexParams) -> int:
    """PQ sub-quantizers (bytes per code at 8 bits): dim / 2 up to 64, a divisor of dim."""
    if params.ivfpq_m is not None:
        if dim % params.ivfpq_m:
            raise InvalidInput(f"ivfpq_m={params.ivfpq_m} does not divide dimension {dim}")
        return params.ivfpq_m
    for m in (64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1):
        if m <= max(1, dim // 2) and dim % m == 0:
            return m
    return 1


def new_faiss_index(
    kind: str, *, dim: int, training: np.ndarray, params: IndexParams, rows: int | None = None
) -> Any:
    """An empty FAISS index of ``kind`` for ``rows`` vectors (default: as many as
    ``training``); IVF types train on ``training``."""
    import faiss

    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = params.hnsw_ef_construction
        hnsw.hnsw.efSearch = params.hnsw_ef_search
        return faiss.IndexIDMap2(hnsw)
    if kind not in IVF_TYPES:
        raise InvalidInput(f"unknown index type {kind!r}")
    # IVF keeps its own ids and supports removal; IndexIDMap2 over it would desynchronise.
    nlist = ideal_nlist(max(rows or 0, training.shape[0]), params)
    nlist = min(nlist, max(1, training.shape[0] // IVF_POINTS_PER_LIST))
    if nlist >= HNSW_QUANTIZER_FROM_NLIST:
        quantizer = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    else:
        quantizer = faiss.IndexFlatIP(dim)
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "ivf":
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
    elif kind == "ivfsq":
        qtype = faiss.ScalarQuantizer.QT_6bit
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, qtype, ip, True)
    else:
        # 8-bit codes need 256 training points; a tiny gallery trains fewer (and is retrained
        # once it outgrows its nlist).
        nbits = max(1, min(8, int(math.log2(max(2, training.shape[0])))))
        ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m(dim, params), nbits, ip)
        ivf.pq.cp.niter = 10  # PQ k-means: 10 rounds give the same recall as 25 here
    ivf.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
    ivf.cp.niter = 10
    ivf.train(training_sample(training, nlist))
    configure_search(ivf, kind=kind, params=params)
    return ivf


def training_sample(vectors: np.ndarray, nlist: int) -> np.ndarray:
    """An evenly strided sample of at most 64 points per list (k-means gains little beyond)."""
    cap = nlist * IVF_TRAIN_POINTS_PER_LIST
    if vectors.shape[0] <= cap:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    step = vectors.shape[0] / cap
    rows = (np.arange(cap) * step).astype(np.int64)
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def configure_search(index: Any, *, kind: str, params: IndexParams) -> None:
    """Search-time knobs follow the current settings (also for a loaded index)."""
    import faiss

    if kind in IVF_TYPES:
        if kind == "ivf":  # exact vectors by id (the compressed types read them from SQL)
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.nprobe = search_nprobe(int(index.nlist), params)
        quantizer = faiss.downcast_index(index.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            quantizer.hnsw.efSearch = max(64, index.nprobe)  # as measured
    elif kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = params.hnsw_ef_search


def outgrown(kind: str, index: Any, *, configured: str, rows: int, params: IndexParams) -> str:
    """Why the index should be rebuilt for ``rows`` vectors ('' when it should not)."""
    wanted = resolve_index_type(configured, rows=rows)
    if configured == "auto" and _RANK[wanted] > _RANK[kind]:
        return f"{rows} vectors: auto index type is now {wanted} (was {kind})"
    if kind in IVF_TYPES and index is not None:
        ideal = ideal_nlist(rows, params)
        if ideal >= IVF_RETRAIN_FACTOR * int(index.nlist):
            return f"{rows} vectors outgrew nlist={index.nlist} (ideal {ideal}): retrain"
    return ""


def stored_ids(kind: str, index: Any) -> np.ndarray:
    """Every id a FAISS index holds (IVF: from its inverted lists; else the IDMap2's map)."""
    import faiss

    if kind not in IVF_TYPES:
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    invlists = index.invlists
    parts = []
    for list_no in range(index.nlist):
        size = invlists.list_size(list_no)
        if size:
            parts.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy())
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def ids_checksum(ids: np.ndarray | list[int] | set[int]) -> str:
    """sha256 of the sorted int64 ids: equal id sets give equal checksums."""
    if not isinstance(ids, np.ndarray):
        ids = np.fromiter((int(i) for i in ids), np.int64)
    arr = np.sort(np.asarray(ids, np.int64))
    return hashlib.sha256(arr.tobytes()).hexdigest()


def index_bytes(index: Any) -> int:
    """Serialized size of a FAISS index: its memory, near enough (codes + ids + centroids)."""
    import faiss

    if index is None:
        return 0
    return int(faiss.serialize_index(index).size)


SIDECAR_SUFFIX = ".json"  # the index file's JSON sidecar: ids checksum, space, sync position


def sidecar_path(index_path: str | Path) -> Path:
    p = Path(index_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def read_sidecar(index_path: str | Path) -> dict[str, Any]:
    side = sidecar_path(index_path)
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise ContractError(f"{side}: missing or unreadable index sidecar") from exc
    if not isinstance(meta, dict):
        raise ContractError(f"{side}: not an index sidecar")
    return meta
