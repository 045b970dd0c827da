"""The cross-model identification protocol of docs/PROTOCOL.md (torch-free: NumPy + FAISS).

- :func:`build_gallery_and_probes` decides which rows are enrolment templates, distractors
  and probes.
- :func:`evaluate_mapping` gives the four rows (old/old, new/new, raw cross, mapped) with
  top-1, top-5, TAR@FAR=1e-3 (percent), the compatibility criterion and the gap closed.
- :func:`closed_set_report` is the same computation on the identities a transformer was fitted
  on: the original study's (optimistic) figure, labelled as such, never the headline.
- :func:`map_rows` runs a transformer over an evaluated set the way the service scores it: the
  queries (:func:`query_vectors`: flip-averaged when the set carries ``new_flip``, unless the
  caller says ``flip=False``) and, for a two-way transformer, the backward map of the gallery.

The mapped row scores what the service scores: forward only (``<f(q), g>``) or two-way fused
(``w * <f(q), g> + (1 - w) * <q, h(g)>``, :mod:`service.fusion`), searched exactly as inner
products of :func:`service.fusion.comparison_vectors`. The old/old, new/new and raw cross rows
always use the plain vectors. All vectors are L2-normalised in exactly one place
(:func:`service.evaluation.rows.unit`; flip-averaged queries by
:func:`service.vectors.flip_average`); similarity is the inner product, searched exactly with
FAISS ``IndexFlatIP``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.contracts import PairsSet
from service.errors import InvalidInput
from service.evaluation.metrics import (
    compatibility,
    gap_closed,
    genuine_impostor_scores,
    mcnemar_exact,
    tar_at_far,
    top_k_hits,
)
from service.evaluation.results import EvaluationReport, RowMetrics, format_percent, format_ratio
from service.evaluation.rows import (
    SCORING_FORWARD,
    MappedRows,
    VectorMap,
    as_mapped_rows,
    map_rows,
    mapped_vectors,
    query_vectors,
    runner_rows,
    scoring_name,
    unit,
)

# The protocol's public names (its parts live in rows.py and results.py).
__all__ = [
    "FAR_TARGET",
    "PROTOCOL_CLOSED_SET",
    "PROTOCOL_OPEN_SET",
    "ROW_MAPPED",
    "ROW_NAMES",
    "ROW_NEW_NEW",
    "ROW_OLD_OLD",
    "ROW_RAW_CROSS",
    "SCORING_FORWARD",
    "TOP_K",
    "EvaluationReport",
    "GalleryAndProbes",
    "MappedRows",
    "RowMetrics",
    "VectorMap",
    "as_mapped_rows",
    "build_gallery_and_probes",
    "closed_set_report",
    "evaluate_mapping",
    "exact_search",
    "format_percent",
    "format_ratio",
    "map_rows",
    "mapped_vectors",
    "query_vectors",
    "runner_rows",
    "scoring_name",
]

FAR_TARGET = 1e-3
TOP_K = 5
ROW_OLD_OLD = "old/old"
ROW_NEW_NEW = "new/new"
ROW_RAW_CROSS = "raw cross"
ROW_MAPPED = "mapped"
ROW_NAMES = (ROW_OLD_OLD, ROW_NEW_NEW, ROW_RAW_CROSS, ROW_MAPPED)
PROTOCOL_OPEN_SET = "open-set (PROTOCOL.md): evaluated on identities the transformer never saw"
PROTOCOL_CLOSED_SET = (
    "CLOSED-SET (study-style, optimistic): evaluated on the identities the transformer was "
    "fitted on; not the headline figure"
)


@dataclass(frozen=True)
class GalleryAndProbes:
    """Row indices into the evaluated pairs set (each array sorted ascending).

    ``gallery_rows`` = ``template_rows`` + ``distractor_rows``; ``template_rows`` holds one
    enrolment image per identity with >= 2 images; ``probe_rows`` holds all their other images.
    """

    template_rows: np.ndarray
    distractor_rows: np.ndarray
    probe_rows: np.ndarray

    @property
    def gallery_rows(self) -> np.ndarray:
        return np.concatenate([self.template_rows, self.distractor_rows])

    def counts(self) -> dict[str, int]:
        return {
            "templates": int(self.template_rows.size),
            "distractors": int(self.distractor_rows.size),
            "probes": int(self.probe_rows.size),
        }


def build_gallery_and_probes(pairs: PairsSet) -> GalleryAndProbes:
    """Split ``pairs`` per PROTOCOL.md: per identity, the image whose ``path`` sorts first is the
    enrolment template and the others are probes; single-image identities are distractors.

    Without a ``path`` column the row order stands in for it (said in the docstring, not guessed).
    """
    labels = np.asarray(pairs.label)
    n = labels.shape[0]
    paths = np.asarray(pairs.path).astype(str) if pairs.path is not None else None
    rows = np.arange(n)
    # lexsort: last key is primary -> by label, then by path (or row index), then by row.
    order = np.lexsort((rows, paths if paths is not None else rows, labels))
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sizes = np.diff(np.r_[starts, n])
    first = order[starts]
    is_first = np.zeros(n, dtype=bool)
    is_first[starts] = True
    group_size = np.repeat(sizes, sizes)
    templates = np.sort(first[sizes >= 2])
    distractors = np.sort(first[sizes == 1])
    probes = np.sort(order[(~is_first) & (group_size >= 2)])
    return GalleryAndProbes(template_rows=templates, distractor_rows=distractors, probe_rows=probes)


def exact_search(*, gallery: np.ndarray, probes: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product search: [n_probes, k] gallery positions, best first, -1 when empty.

    FAISS returns id -1 (score -inf) for the slots beyond the gallery size when k > ntotal;
    those are kept as -1, which the metrics treat as "no result".
    """
    import faiss  # imported here: importing this module starts nothing

    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(probes, dtype=np.float32), k)
    return np.where(ids < 0, -1, ids)


def _score_row(
    *,
    name: str,
    probe: str,
    gallery: str,
    probe_vectors: np.ndarray,
    gallery_vectors: np.ndarray,
    split: GalleryAndProbes,
    labels: np.ndarray,
    scores_out: dict[str, tuple[np.ndarray, np.ndarray]],
    hits_out: dict[str, np.ndarray],
) -> RowMetrics:
    """Identification (probes vs the whole gallery) and verification (probes vs templates)."""
    gallery_rows = split.gallery_rows
    probe_labels = labels[split.probe_rows]
    ranked = exact_search(gallery=gallery_vectors, probes=probe_vectors, k=TOP_K)
    hits = {
        k: top_k_hits(
            ranked_ids=ranked,
            gallery_labels=labels[gallery_rows],
            probe_labels=probe_labels,
            k=k,
        )
        for k in (1, TOP_K)
    }
    top = {k: float(100.0 * h.mean()) for k, h in hits.items()}
    templates = gallery_vectors[: split.template_rows.size]  # templates come first
    genuine, impostor = genuine_impostor_scores(
        scores=probe_vectors @ templates.T,
        probe_labels=probe_labels,
        template_labels=labels[split.template_rows],
    )
    scores_out[name] = (genuine, impostor)
    hits_out[name] = hits[1]
    verification = tar_at_far(genuine=genuine, impostor=impostor, far=FAR_TARGET)
    return RowMetrics(
        name=name,
        probe=probe,
        gallery=gallery,
        top1=top[1],
        top5=top[TOP_K],
        tar_at_far_1e3=verification.tar,
        # -inf (every impostor acceptable) is not JSON: say "no threshold" instead.
        threshold_at_far_1e3=(
            verification.threshold if np.isfinite(verification.threshold) else None
        ),
    )


def _reference_rows(
    *, pairs: PairsSet, split: GalleryAndProbes, common: dict[str, Any]
) -> dict[str, RowMetrics]:
    """The old/old, new/new and raw cross rows (plain vectors; raw cross only for equal dims)."""
    gallery_rows, probe_rows = split.gallery_rows, split.probe_rows
    old_gallery, new_gallery = unit(pairs.old[gallery_rows]), unit(pairs.new[gallery_rows])
    old_probes, new_probes = unit(pairs.old[probe_rows]), unit(pairs.new[probe_rows])
    # (row, probe, gallery, probe vectors, gallery vectors)
    specs = [
        (ROW_OLD_OLD, "old model", "old model", old_probes, old_gallery),
        (ROW_NEW_NEW, "new model", "new model", new_probes, new_gallery),
    ]
    if pairs.new_dim == pairs.old_dim:
        specs.append((ROW_RAW_CROSS, "new model, unmapped", "old model", new_probes, old_gallery))
    rows = {
        name: _score_row(
            name=name,
            probe=probe,
            gallery=gallery,
            probe_vectors=probe_vectors,
            gallery_vectors=gallery_vectors,
            **common,
        )
        for name, probe, gallery, probe_vectors, gallery_vectors in specs
    }
    if ROW_RAW_CROSS not in rows:
        rows[ROW_RAW_CROSS] = RowMetrics(
            name=ROW_RAW_CROSS,
            probe="new model, unmapped",
            gallery="old model",
            note=f"n/a: dims differ (new {pairs.new_dim}, old {pairs.old_dim})",
        )
    return rows


def _mapped_row(
    *,
    pairs: PairsSet,
    mapped: MappedRows | None,
    split: GalleryAndProbes,
    common: dict[str, Any],
) -> RowMetrics:
    """The mapped row: the transformer's queries against the old gallery, as the service scores."""
    if mapped is None:
        return RowMetrics(
            name=ROW_MAPPED, probe="transformer(new)", gallery="old model", note="no mapping given"
        )
    gallery_rows = split.gallery_rows
    probe_vectors, gallery_vectors = mapped_vectors(
        mapped,
        query_rows=split.probe_rows,
        gallery_rows=gallery_rows,
        old_gallery=unit(pairs.old[gallery_rows]),
    )
    row = _score_row(
        name=ROW_MAPPED,
        probe="transformer(new)",
        gallery="old model",
        probe_vectors=probe_vectors,
        gallery_vectors=gallery_vectors,
        **common,
    )
    row.note = f"{mapped.query_kind} queries; {mapped.scoring}"
    return row


def _evaluate(
    *, pairs: PairsSet, mapped: np.ndarray | MappedRows | None, protocol: str
) -> EvaluationReport:
    mapped = as_mapped_rows(pairs, mapped)
    split = build_gallery_and_probes(pairs)
    if split.probe_rows.size == 0 or split.template_rows.size == 0:
        raise InvalidInput(
            "the evaluation set has no identity with >= 2 images: no probes to evaluate"
        )
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    hits: dict[str, np.ndarray] = {}  # per-probe top-1 hits, for the paired test
    labels = np.asarray(pairs.label)
    common = {"split": split, "labels": labels, "scores_out": scores, "hits_out": hits}
    rows = _reference_rows(pairs=pairs, split=split, common=common)
    rows[ROW_MAPPED] = _mapped_row(pairs=pairs, mapped=mapped, split=split, common=common)
    old_top1, new_top1, mapped_top1 = (
        rows[ROW_OLD_OLD].top1,
        rows[ROW_NEW_NEW].top1,
        rows[ROW_MAPPED].top1,
    )
    assert old_top1 is not None and new_top1 is not None  # always computed above
    counts = split.counts()
    return EvaluationReport(
        protocol=protocol,
        rows=rows,
        templates=counts["templates"],
        distractors=counts["distractors"],
        probes=counts["probes"],
        compatible=None
        if mapped_top1 is None
        else compatibility(mapped_top1=mapped_top1, old_top1=old_top1),
        gap_closed=None
        if mapped_top1 is None
        else gap_closed(mapped=mapped_top1, old=old_top1, new=new_top1),
        scores=scores,
        queries=None if mapped is None else mapped.query_kind,
        scoring=None if mapped is None else mapped.scoring,
        paired=None
        if ROW_MAPPED not in hits
        else mcnemar_exact(hits_a=hits[ROW_MAPPED], hits_b=hits[ROW_OLD_OLD]),
    )


def evaluate_mapping(
    *, eval_pairs: PairsSet, mapped: np.ndarray | MappedRows | None
) -> EvaluationReport:
    """The four-row report of PROTOCOL.md on ``eval_pairs`` (identities unseen in fitting).

    ``mapped`` = the transformer's output for every row of ``eval_pairs``: :class:`MappedRows`
    from :func:`map_rows` (queries as the service sends them, two-way fused scoring), or a bare
    array [n, d_old] = f(unit(new)) (plain queries, forward scoring), or None. Raw or unit
    vectors give the same figures (they are normalised here).
    """
    return _evaluate(pairs=eval_pairs, mapped=mapped, protocol=PROTOCOL_OPEN_SET)


def closed_set_report(
    *, fit_pairs: PairsSet, mapped: np.ndarray | MappedRows | None
) -> EvaluationReport:
    """The study-style closed-set figure: the protocol run on the very rows the transformer was
    fitted on (``mapped`` = its output for ``fit_pairs``, as in :func:`evaluate_mapping`).
    Labelled CLOSED-SET everywhere."""
    return _evaluate(pairs=fit_pairs, mapped=mapped, protocol=PROTOCOL_CLOSED_SET)
