"""The vector-store interface: what the gallery needs from an engine (FAISS, Milvus).

A store holds the vectors of ONE embedding space (today the old model's; more spaces come with
the progressive migration), keyed by SQL face ids, scored by inner product on unit vectors.
SQL stays the source of truth: every store can be rebuilt from the ``faces`` table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

DEFAULT_SPACE = "default"


class Hits(NamedTuple):
    """Neighbours of one query, best first; empty slots removed."""

    ids: np.ndarray  # int64 face ids
    scores: np.ndarray  # float32 inner products (cosine)
    # [len(ids), d] stored vectors of those ids, read with the search (with_vectors=True)
    vectors: np.ndarray | None = None


@runtime_checkable
class VectorStore(Protocol):
    """One embedding space's vectors, keyed by face id. Thread-safe."""

    engine: str  # "faiss" | "milvus"
    space: str  # the embedding space (a model id)

    @property
    def index_type(self) -> str: ...

    @property
    def dim(self) -> int | None: ...

    @property
    def ntotal(self) -> int: ...

    def add(
        self, *, ids: Iterable[int] | np.ndarray, vectors: np.ndarray, replace: bool = False
    ) -> None: ...

    def remove(self, *, ids: Iterable[int] | np.ndarray) -> int: ...

    def contains_many(self, ids: np.ndarray) -> np.ndarray: ...

    def ids(self) -> set[int]: ...

    def search(self, vectors: np.ndarray, *, k: int, with_vectors: bool = False) -> list[Hits]: ...

    def reconstruct_many(self, ids: Iterable[int] | np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def as_id_array(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    """int64, 1-D, C-contiguous (what FAISS and pymilvus take)."""
    if isinstance(ids, np.ndarray):
        return np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    return np.fromiter((int(i) for i in ids), dtype=np.int64)


def space_slug(space: str) -> str:
    """A space (model id) as a name FAISS files and Milvus collections accept: [a-z0-9_]."""
    slug = re.sub(r"[^a-z0-9_]+", "_", space.lower()).strip("_")
    return slug or DEFAULT_SPACE
