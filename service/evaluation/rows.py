"""What a transformer gives the protocol: its output for every row of an evaluated pairs set,
computed the way the service scores (:func:`map_rows`, :func:`runner_rows`), and the vectors
whose inner products are the mapped row's scores (:func:`mapped_vectors`).

All vectors of the evaluation side are L2-normalised here in exactly one place (:func:`unit`;
flip-averaged queries by :func:`service.vectors.flip_average`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.contracts import PairsSet
from service.errors import InvalidInput
from service.fusion import comparison_vectors
from service.vectors import QUERIES_FLIP, QUERIES_PLAIN, flip_average, l2_normalize

SCORING_FORWARD = "forward"
VectorMap = Callable[[np.ndarray], np.ndarray]


def unit(vectors: np.ndarray) -> np.ndarray:
    """THE normalisation of the evaluation side (one place per side)."""
    return l2_normalize(vectors)


def scoring_name(fusion_weight: float) -> str:
    """``"forward"`` or ``"two-way fused, w=0.9"`` (how the mapped row was scored)."""
    w = float(fusion_weight)
    return SCORING_FORWARD if w == 1.0 else f"two-way fused, w={w:g}"


def query_vectors(pairs: PairsSet, *, flip: bool = True) -> tuple[np.ndarray, str]:
    """The unit new-model query vector of every row and its kind (:data:`QUERIES_PLAIN` or
    :data:`QUERIES_FLIP`): flip-averaged (:func:`service.vectors.flip_average`) when the set
    carries ``new_flip`` and ``flip`` is on, else the plain new vector."""
    new_flip = getattr(pairs, "new_flip", None)
    if flip and new_flip is not None:
        return flip_average(pairs.new, new_flip), QUERIES_FLIP
    return unit(pairs.new), QUERIES_PLAIN


@dataclass(frozen=True)
class MappedRows:
    """A transformer's output for every row of an evaluated pairs set (what the service scores).

    ``forward`` = f(q) [n, d_old] for the query vectors ``queries`` [n, d_new] (unit);
    ``backward`` = h(unit old) [n, d_new], two-way only (``fusion_weight`` < 1). Forward and
    backward may be raw or unit: they are normalised here.
    """

    forward: np.ndarray
    queries: np.ndarray
    query_kind: str = QUERIES_PLAIN
    backward: np.ndarray | None = None
    fusion_weight: float = 1.0

    @property
    def scoring(self) -> str:
        return scoring_name(self.fusion_weight)


def map_rows(
    pairs: PairsSet,
    *,
    forward: VectorMap,
    backward: VectorMap | None = None,
    fusion_weight: float = 1.0,
    flip: bool = True,
) -> MappedRows:
    """Run a transformer's maps over ``pairs`` the way the service does: ``forward`` on the
    query vectors (:func:`query_vectors`), ``backward`` (two-way) on the unit old vectors."""
    if (backward is None) != (float(fusion_weight) == 1.0):
        raise InvalidInput("a backward map goes with a fusion weight < 1 and only with it")
    queries, kind = query_vectors(pairs, flip=flip)
    return MappedRows(
        forward=forward(queries),
        queries=queries,
        query_kind=kind,
        backward=None if backward is None else backward(unit(pairs.old)),
        fusion_weight=float(fusion_weight),
    )


def runner_rows(pairs: PairsSet, *, runner: Any, flip: bool = True) -> MappedRows:
    """:func:`map_rows` with an ONNX transformer runner
    (:class:`service.inference.transformer.TransformerRunner`: ``map``, ``map_gallery``,
    ``two_way``, ``fusion_weight``), the way the service uses it."""
    return map_rows(
        pairs,
        forward=runner.map,
        backward=runner.map_gallery if runner.two_way else None,
        fusion_weight=runner.fusion_weight,
        flip=flip,
    )


def as_mapped_rows(pairs: PairsSet, mapped: np.ndarray | MappedRows | None) -> MappedRows | None:
    """Check shapes; a bare array is f(unit(new)): plain queries, forward scoring."""
    if mapped is None:
        return None
    if not isinstance(mapped, MappedRows):
        mapped = MappedRows(forward=np.asarray(mapped), queries=unit(pairs.new))
    n = len(pairs)
    expected = [("mapped vectors", mapped.forward, pairs.old_dim, "old")]
    expected.append(("query vectors", mapped.queries, pairs.new_dim, "new"))
    if mapped.fusion_weight != 1.0:
        if mapped.backward is None:
            raise InvalidInput("two-way scoring (fusion weight < 1) needs the backward vectors")
        expected.append(("backward vectors", mapped.backward, pairs.new_dim, "new"))
    for what, array, dim, side in expected:
        shape = np.shape(array)
        if len(shape) != 2 or shape != (n, dim):
            raise InvalidInput(
                f"{what} must be [{n}, {dim}] (one per pairs row, {side}-model dimension), "
                f"got {shape}"
            )
    return mapped


def mapped_vectors(
    mapped: MappedRows, *, query_rows: np.ndarray, gallery_rows: np.ndarray, old_gallery: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(query, gallery) vectors whose inner products are the mapped row's scores (what the
    service scores): ``query_rows`` as queries, ``gallery_rows`` (unit ``old_gallery``) as
    gallery; forward, or two-way fused in the comparison space (service.fusion)."""
    forward = unit(mapped.forward[query_rows])
    if mapped.fusion_weight == 1.0:
        return forward, old_gallery
    assert mapped.backward is not None  # checked in as_mapped_rows
    probes = comparison_vectors(
        old_part=forward,
        new_part=unit(mapped.queries[query_rows]),
        weight=mapped.fusion_weight,
    )
    gallery = comparison_vectors(
        old_part=old_gallery,
        new_part=unit(mapped.backward[gallery_rows]),
        weight=mapped.fusion_weight,
    )
    return probes, gallery
