"""The distributed engine: one Milvus collection per embedding space, through ``pymilvus``.

``uri`` is a file path for Milvus Lite (the ``milvus-lite`` package: tests, one node; one process
per file) or ``http://HOST:19530`` for a Milvus standalone server or cluster, where sharding and
replicas are Milvus's job. Collection ``<prefix>_<space>``: ``id`` INT64 primary key = SQL face
id, ``vector`` FLOAT_VECTOR, metric IP on unit vectors; index type and its build/search params
come from the settings. SQL stays the source of truth (``facebridge gallery rebuild`` drops and
refills the collection from it). Importing this module does not import pymilvus.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import ContractError, InvalidInput, ServiceUnavailable
from service.gallery.engines.base import DEFAULT_SPACE, Hits, as_id_array, space_slug
from service.vectors import as_float32_matrix

if TYPE_CHECKING:
    from service.settings import ServiceSettings

MILVUS_INDEX_TYPES = ("AUTOINDEX", "FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "HNSW_SQ")
WRITE_BATCH = 5_000  # rows per insert/delete call (gRPC message size stays small)
ID_QUERY_BATCH = 1_000  # ids per "id in [...]" expression
ITERATOR_BATCH = 10_000


@dataclass(frozen=True)
class MilvusParams:
    index_type: str = "AUTOINDEX"
    nlist: int = 1024
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    pq_m: int = 32
    consistency_level: str = "Session"

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> MilvusParams:
        return cls(
            index_type=settings.milvus_index_type,
            nlist=settings.ivf_nlist or 1024,
            nprobe=settings.ivf_nprobe or 32,
            hnsw_m=settings.hnsw_m,
            ef_construction=settings.hnsw_ef_construction,
            ef_search=settings.hnsw_ef_search,
            pq_m=settings.ivfpq_m or 32,
            consistency_level=settings.milvus_consistency_level,
        )

    def build_params(self) -> dict[str, Any]:
        if self.index_type in ("IVF_FLAT", "IVF_SQ8"):
            return {"nlist": self.nlist}
        if self.index_type == "IVF_PQ":
            return {"nlist": self.nlist, "m": self.pq_m, "nbits": 8}
        if self.index_type in ("HNSW", "HNSW_SQ"):
            return {"M": self.hnsw_m, "efConstruction": self.ef_construction}
        return {}

    def search_params(self, k: int = 1) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.index_type.startswith("IVF"):
            params["nprobe"] = self.nprobe
        elif self.index_type.startswith("HNSW") or self.index_type == "AUTOINDEX":
            params["ef"] = max(self.ef_search, k)  # Milvus refuses ef < k
        return {"metric_type": "IP", "params": params}


def milvus_client(uri: str, *, token: str | None = None) -> Any:
    """A pymilvus client; a file path starts (or reuses) Milvus Lite in this process."""
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:  # the optional extra
        raise ServiceUnavailable(
            "FACEBRIDGE_VECTOR_STORE=milvus needs pymilvus: pip install 'facebridge[milvus]'"
        ) from exc
    lite = not uri.startswith(("http://", "https://", "tcp://", "unix:"))
    if lite:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    # Milvus Lite's local server can miss pymilvus' 10 s connect window while it starts on a
    # busy machine (seen in CI): a file URI gets two more tries; a remote URI fails at once.
    for attempt in range(3 if lite else 1):
        try:
            return MilvusClient(uri=uri, token=token or "")
        except Exception as exc:
            if attempt == (2 if lite else 0):
                raise ServiceUnavailable(f"cannot reach Milvus at {uri}: {exc}") from exc
            time.sleep(1.0)
    raise AssertionError("unreachable")


class MilvusStore:
    """One space's vectors in a Milvus collection. Thread-safe (pymilvus clients are)."""

    engine = "milvus"
    exact_vectors = True  # Milvus returns the inserted float vectors

    def __init__(
        self,
        *,
        client: Any,
        dim: int | None,
        space: str = DEFAULT_SPACE,
        params: MilvusParams | None = None,
        collection_prefix: str = "facebridge",
    ) -> None:
        self.client = client
        self.space = space
        self.params = params or MilvusParams()
        if self.params.index_type not in MILVUS_INDEX_TYPES:
            raise InvalidInput(f"unknown Milvus index type {self.params.index_type!r}")
        self.collection = f"{collection_prefix}_{space_slug(space)}"
        self._dim = dim
        self.existed = bool(client.has_collection(self.collection))
        if self.existed:
            self._dim = self._stored_dim()
            if dim is not None and self._dim != dim:
                raise ContractError(
                    f"Milvus collection {self.collection} has dimension {self._dim}, "
                    f"gallery {dim}: rebuild it (facebridge gallery rebuild)"
                )
            client.load_collection(self.collection)
        elif dim is not None:
            self._create(dim)

    @classmethod
    def from_settings(
        cls, *, dim: int | None, settings: ServiceSettings, space: str = DEFAULT_SPACE
    ) -> MilvusStore:
        token = settings.milvus_token.get_secret_value() if settings.milvus_token else None
        return cls(
            client=milvus_client(settings.milvus_file_or_uri, token=token),
            dim=dim,
            space=space,
            params=MilvusParams.from_settings(settings),
            collection_prefix=settings.milvus_collection_prefix,
        )

    # ------------------------------------------------------------------------------------------
    def _stored_dim(self) -> int:
        described = self.client.describe_collection(self.collection)
        for field in described.get("fields", []):
            if field.get("name") == "vector":
                return int(field.get("params", {}).get("dim"))
        raise ContractError(f"Milvus collection {self.collection} has no 'vector' field")

    def _create(self, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index = self.client.prepare_index_params()
        index.add_index(
            field_name="vector",
            index_type=self.params.index_type,
            metric_type="IP",
            params=self.params.build_params(),
        )
        self.client.create_collection(
            self.collection,
            schema=schema,
            index_params=index,
            consistency_level=self.params.consistency_level,
        )
        self.client.load_collection(self.collection)
        self._dim = dim

    def drop(self) -> None:
        """Drop the collection (a rebuild from SQL refills it)."""
        if self.client.has_collection(self.collection):
            self.client.drop_collection(self.collection)
        self._dim = None  # the next add creates it again

    @property
    def index_type(self) -> str:
        return self.params.index_type

    @property
    def dim(self) -> int | None:
        return self._dim

    @property
    def ntotal(self) -> int:
        if self._dim is None:
            return 0
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def __len__(self) -> int:
        return self.ntotal

    def __contains__(self, face_id: object) -> bool:
        if not isinstance(face_id, int | np.integer):
            return False
        return bool(self.contains_many(np.asarray([face_id]))[0])

    def __repr__(self) -> str:
        return f"MilvusStore(collection={self.collection}, type={self.index_type})"

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------------------------------
    def add(
        self, *, ids: Iterable[int] | np.ndarray, vectors: np.ndarray, replace: bool = False
    ) -> None:
        """Add vectors under ``ids``; an id already there is kept (faces never change), or
        replaced with ``replace=True`` (Milvus upsert)."""
        ids_arr = as_id_array(ids)
        if ids_arr.size == 0:
            return
        if self._dim is None:
            self._create(int(np.asarray(vectors).shape[-1]))
        vectors = as_float32_matrix(vectors, dim=self._dim, name="gallery vectors")
        if ids_arr.shape[0] != vectors.shape[0]:
            raise InvalidInput(f"{ids_arr.shape[0]} ids for {vectors.shape[0]} vectors")
        if np.unique(ids_arr).shape[0] != ids_arr.shape[0]:
            raise InvalidInput("duplicate ids in one add")
        if not replace:
            new = ~self.contains_many(ids_arr)
            ids_arr, vectors = ids_arr[new], vectors[new]
        for start in range(0, ids_arr.shape[0], WRITE_BATCH):
            rows = [
                {"id": int(i), "vector": v}
                for i, v in zip(
                    ids_arr[start : start + WRITE_BATCH],
                    vectors[start : start + WRITE_BATCH],
                    strict=True,
                )
            ]
            self.client.upsert(self.collection, rows)

    def remove(self, *, ids: Iterable[int] | np.ndarray) -> int:
        """Delete ``ids`` (unknown ids are ignored); returns how many were present."""
        wanted = np.unique(as_id_array(ids))
        if wanted.size == 0 or self._dim is None:
            return 0
        present = wanted[self.contains_many(wanted)]
        for start in range(0, present.shape[0], WRITE_BATCH):
            part = present[start : start + WRITE_BATCH].tolist()
            self.client.delete(self.collection, ids=part)
        return int(present.size)

    def contains_many(self, ids: np.ndarray) -> np.ndarray:
        wanted = as_id_array(ids)
        if wanted.size == 0 or self._dim is None:
            return np.zeros(wanted.shape, bool)
        found: set[int] = set()
        for start in range(0, wanted.shape[0], ID_QUERY_BATCH):
            part = wanted[start : start + ID_QUERY_BATCH].tolist()
            rows = self.client.query(self.collection, ids=part, output_fields=["id"])
            found.update(int(r["id"]) for r in rows)
        return np.fromiter((int(i) in found for i in wanted), bool, count=wanted.shape[0])

    def ids(self) -> set[int]:
        """Every id in the collection (O(n): for consistency checks and repairs)."""
        if self._dim is None:
            return set()
        out: set[int] = set()
        iterator = self.client.query_iterator(
            self.collection, batch_size=ITERATOR_BATCH, filter="", output_fields=["id"]
        )
        try:
            while batch := iterator.next():
                out.update(int(r["id"]) for r in batch)
        finally:
            iterator.close()
        return out

    def search(self, vectors: np.ndarray, *, k: int, with_vectors: bool = False) -> list[Hits]:
        if k < 1:
            raise InvalidInput("k must be at least 1")
        queries = as_float32_matrix(vectors, dim=self._dim, name="query vectors")
        dim = self._dim or queries.shape[1]
        if self._dim is None:
            empty = np.zeros((0, dim), np.float32) if with_vectors else None
            return [Hits(np.zeros(0, np.int64), np.zeros(0, np.float32), empty)] * len(queries)
        found = self.client.search(
            self.collection,
            data=list(queries),
            limit=k,
            output_fields=["vector"] if with_vectors else ["id"],
            search_params=self.params.search_params(k),
            consistency_level=self.params.consistency_level,
        )
        out = []
        for row in found:
            ids = np.asarray([int(h["id"]) for h in row], np.int64)
            scores = np.asarray([float(h["distance"]) for h in row], np.float32)
            held = None
            if with_vectors:
                held = np.asarray([h["entity"]["vector"] for h in row], np.float32).reshape(-1, dim)
            out.append(Hits(ids, scores, held))
        return out

    def reconstruct_many(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        wanted = as_id_array(ids)
        if wanted.size == 0:
            return np.zeros((0, self._dim or 0), np.float32)
        rows = self.client.get(self.collection, ids=wanted.tolist(), output_fields=["vector"])
        by_id = {int(r["id"]): r["vector"] for r in rows}
        missing = [int(i) for i in wanted if int(i) not in by_id]
        if missing:
            raise KeyError(missing[0])
        return np.asarray([by_id[int(i)] for i in wanted], np.float32)
