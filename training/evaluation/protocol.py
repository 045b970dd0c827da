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
always use the plain vectors. All vectors are L2-normalised here in exactly one place
(:func:`_unit`; flip-averaged queries by :func:`service.vectors.flip_average`); similarity is
the inner product, searched exactly with FAISS ``IndexFlatIP``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from service.contracts import PairsSet
from service.errors import InvalidInput
from service.fusion import comparison_vectors
from service.vectors import QUERIES_FLIP, QUERIES_PLAIN, flip_average, l2_normalize
from training.evaluation.metrics import (
    PairedComparison,
    compatibility,
    gap_closed,
    genuine_impostor_scores,
    mcnemar_exact,
    tar_at_far,
    top_k_hits,
)

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
SCORING_FORWARD = "forward"
VectorMap = Callable[[np.ndarray], np.ndarray]


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
    return _unit(pairs.new), QUERIES_PLAIN


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
        backward=None if backward is None else backward(_unit(pairs.old)),
        fusion_weight=float(fusion_weight),
    )


def session_rows(pairs: PairsSet, *, session: Any, flip: bool = True) -> MappedRows:
    """:func:`map_rows` with an ONNX transformer runner
    (:class:`service.inference.transformer.TransformerSession`: ``map``, ``map_gallery``,
    ``two_way``, ``fusion_weight``), the way the service uses it."""
    return map_rows(
        pairs,
        forward=session.map,
        backward=session.map_gallery if session.two_way else None,
        fusion_weight=session.fusion_weight,
        flip=flip,
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


@dataclass
class RowMetrics:
    """One row of the report. Metrics are percent; None where the row is not applicable."""

    name: str
    probe: str
    gallery: str
    top1: float | None = None
    top5: float | None = None
    tar_at_far_1e3: float | None = None
    threshold_at_far_1e3: float | None = None
    note: str = ""

    @property
    def available(self) -> bool:
        return self.top1 is not None


@dataclass
class EvaluationReport:
    """The four rows plus the criterion; ``scores`` keeps genuine/impostor scores for plots."""

    protocol: str
    rows: dict[str, RowMetrics]
    templates: int
    distractors: int
    probes: int
    compatible: bool | None
    gap_closed: float | None
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    # the mapped row's queries (QUERIES_*) and scoring (scoring_name); None without a mapping
    queries: str | None = None
    scoring: str | None = None
    # mapped vs old/old top-1 on the same probes (a = mapped, b = old/old); None without mapping
    paired: PairedComparison | None = None
    # the open-set (1:N) figures (training.evaluation.openset.OpenSetReport), when computed
    open_set: Any = None

    def row(self, name: str) -> RowMetrics:
        try:
            return self.rows[name]
        except KeyError:
            raise InvalidInput(f"no row {name!r}; rows: {', '.join(self.rows)}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "gallery": {"templates": self.templates, "distractors": self.distractors},
            "probes": self.probes,
            "rows": {name: asdict(row) for name, row in self.rows.items()},
            "compatible": self.compatible,
            "gap_closed": self.gap_closed,
            "mapped_queries": self.queries,
            "mapped_scoring": self.scoring,
            "mapped_vs_old_old": None
            if self.paired is None
            else {
                "only_mapped_right": self.paired.only_a,
                "only_old_old_right": self.paired.only_b,
                "mcnemar_p": self.paired.p_value,
            },
            "open_set": None if self.open_set is None else self.open_set.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        lines = [
            f"Protocol: {self.protocol}. Gallery: {self.templates} templates + "
            f"{self.distractors} distractors; {self.probes} probes.",
            "",
            "| row | probe | gallery | top-1 | top-5 | TAR@FAR=1e-3 |",
            "|---|---|---|---|---|---|",
        ]
        for row in self.rows.values():
            lines.append(
                f"| {row.name} | {row.probe} | {row.gallery} | {format_percent(row.top1)} | "
                f"{format_percent(row.top5)} | {format_percent(row.tar_at_far_1e3)} |"
            )
        if self.queries is not None:
            lines += ["", f"Mapped row: {self.queries} queries; scoring: {self.scoring}."]
        if self.compatible is not None:
            verdict = "met" if self.compatible else "NOT met"
            lines += [
                "",
                f"Compatibility criterion (mapped top-1 > old/old top-1): {verdict}; "
                f"gap closed: {format_ratio(self.gap_closed)}.",
            ]
        if self.paired is not None:
            lines += [
                "",
                f"Paired with old/old (top-1, same probes): {self.paired.only_a} probes only "
                f"mapped gets right, {self.paired.only_b} only old/old; exact McNemar "
                f"p = {self.paired.p_value:.3f}.",
            ]
        if self.open_set is not None:
            lines += ["", self.open_set.to_markdown().rstrip("\n")]
        return "\n".join(lines) + "\n"


def format_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _unit(vectors: np.ndarray) -> np.ndarray:
    """THE normalisation of the evaluation side (house rule: one place per side)."""
    return l2_normalize(vectors)


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


def as_mapped_rows(pairs: PairsSet, mapped: np.ndarray | MappedRows | None) -> MappedRows | None:
    """Check shapes; a bare array is f(unit(new)): plain queries, forward scoring."""
    if mapped is None:
        return None
    if not isinstance(mapped, MappedRows):
        mapped = MappedRows(forward=np.asarray(mapped), queries=_unit(pairs.new))
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
    forward = _unit(mapped.forward[query_rows])
    if mapped.fusion_weight == 1.0:
        return forward, old_gallery
    assert mapped.backward is not None  # checked in as_mapped_rows
    probes = comparison_vectors(
        old_part=forward,
        new_part=_unit(mapped.queries[query_rows]),
        weight=mapped.fusion_weight,
    )
    gallery = comparison_vectors(
        old_part=old_gallery,
        new_part=_unit(mapped.backward[gallery_rows]),
        weight=mapped.fusion_weight,
    )
    return probes, gallery


def _evaluate(
    *, pairs: PairsSet, mapped: np.ndarray | MappedRows | None, protocol: str
) -> EvaluationReport:
    mapped = as_mapped_rows(pairs, mapped)
    split = build_gallery_and_probes(pairs)
    if split.probe_rows.size == 0 or split.template_rows.size == 0:
        raise InvalidInput(
            "the evaluation set has no identity with >= 2 images: no probes to evaluate"
        )
    labels = np.asarray(pairs.label)
    gallery_rows, probe_rows = split.gallery_rows, split.probe_rows
    old_gallery = _unit(pairs.old[gallery_rows])
    new_gallery = _unit(pairs.new[gallery_rows])
    old_probes = _unit(pairs.old[probe_rows])
    new_probes = _unit(pairs.new[probe_rows])
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    hits: dict[str, np.ndarray] = {}  # per-probe top-1 hits, for the paired test
    common = {"split": split, "labels": labels, "scores_out": scores, "hits_out": hits}
    rows = {
        ROW_OLD_OLD: _score_row(
            name=ROW_OLD_OLD,
            probe="old model",
            gallery="old model",
            probe_vectors=old_probes,
            gallery_vectors=old_gallery,
            **common,
        ),
        ROW_NEW_NEW: _score_row(
            name=ROW_NEW_NEW,
            probe="new model",
            gallery="new model",
            probe_vectors=new_probes,
            gallery_vectors=new_gallery,
            **common,
        ),
    }
    if pairs.new_dim == pairs.old_dim:
        rows[ROW_RAW_CROSS] = _score_row(
            name=ROW_RAW_CROSS,
            probe="new model, unmapped",
            gallery="old model",
            probe_vectors=new_probes,
            gallery_vectors=old_gallery,
            **common,
        )
    else:
        rows[ROW_RAW_CROSS] = RowMetrics(
            name=ROW_RAW_CROSS,
            probe="new model, unmapped",
            gallery="old model",
            note=f"n/a: dims differ (new {pairs.new_dim}, old {pairs.old_dim})",
        )
    if mapped is not None:
        probe_vectors, gallery_vectors = mapped_vectors(
            mapped, query_rows=probe_rows, gallery_rows=gallery_rows, old_gallery=old_gallery
        )
        rows[ROW_MAPPED] = _score_row(
            name=ROW_MAPPED,
            probe="transformer(new)",
            gallery="old model",
            probe_vectors=probe_vectors,
            gallery_vectors=gallery_vectors,
            **common,
        )
        rows[ROW_MAPPED].note = f"{mapped.query_kind} queries; {mapped.scoring}"
    else:
        rows[ROW_MAPPED] = RowMetrics(
            name=ROW_MAPPED, probe="transformer(new)", gallery="old model", note="no mapping given"
        )
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
