"""The cross-model identification protocol of docs/PROTOCOL.md (torch-free: NumPy + FAISS).

- :func:`build_gallery_and_probes` decides which rows are enrolment templates, distractors
  and probes.
- :func:`evaluate_mapping` gives the four rows (old/old, new/new, raw cross, mapped) with
  top-1, top-5, TAR@FAR=1e-3 (percent), the compatibility criterion and the gap closed.
- :func:`closed_set_report` is the same computation on the identities a transformer was fitted
  on: the original study's (optimistic) figure, labelled as such, never the headline.

All vectors are L2-normalised here in exactly one place (:func:`_unit`); similarity is the
inner product, searched exactly with FAISS ``IndexFlatIP``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from service.contracts import PairsSet
from service.errors import InvalidInput
from service.vectors import l2_normalize
from training.evaluation.metrics import (
    compatibility,
    gap_closed,
    genuine_impostor_scores,
    tar_at_far,
    top_k_accuracy,
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
        if self.compatible is not None:
            verdict = "met" if self.compatible else "NOT met"
            lines += [
                "",
                f"Compatibility criterion (mapped top-1 > old/old top-1): {verdict}; "
                f"gap closed: {format_ratio(self.gap_closed)}.",
            ]
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
) -> RowMetrics:
    """Identification (probes vs the whole gallery) and verification (probes vs templates)."""
    gallery_rows = split.gallery_rows
    probe_labels = labels[split.probe_rows]
    ranked = exact_search(gallery=gallery_vectors, probes=probe_vectors, k=TOP_K)
    top = {
        k: top_k_accuracy(
            ranked_ids=ranked,
            gallery_labels=labels[gallery_rows],
            probe_labels=probe_labels,
            k=k,
        )
        for k in (1, TOP_K)
    }
    templates = gallery_vectors[: split.template_rows.size]  # templates come first
    genuine, impostor = genuine_impostor_scores(
        scores=probe_vectors @ templates.T,
        probe_labels=probe_labels,
        template_labels=labels[split.template_rows],
    )
    scores_out[name] = (genuine, impostor)
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


def _evaluate(*, pairs: PairsSet, mapped: np.ndarray | None, protocol: str) -> EvaluationReport:
    n = len(pairs)
    if mapped is not None:
        mapped = np.asarray(mapped)
        if mapped.ndim != 2 or mapped.shape != (n, pairs.old_dim):
            raise InvalidInput(
                f"mapped vectors must be [{n}, {pairs.old_dim}] (one per pairs row, old-model "
                f"dimension), got {mapped.shape}"
            )
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
    common = {"split": split, "labels": labels, "scores_out": scores}
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
        rows[ROW_MAPPED] = _score_row(
            name=ROW_MAPPED,
            probe="transformer(new)",
            gallery="old model",
            probe_vectors=_unit(mapped[probe_rows]),
            gallery_vectors=old_gallery,
            **common,
        )
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
    )


def evaluate_mapping(*, eval_pairs: PairsSet, mapped: np.ndarray | None) -> EvaluationReport:
    """The four-row report of PROTOCOL.md on ``eval_pairs`` (identities unseen in fitting).

    ``mapped`` = the transformer's output for every row of ``eval_pairs`` ([n, d_old]; it is
    normalised here, so normalised or raw input gives the same figures), or None.
    """
    return _evaluate(pairs=eval_pairs, mapped=mapped, protocol=PROTOCOL_OPEN_SET)


def closed_set_report(*, fit_pairs: PairsSet, mapped: np.ndarray | None) -> EvaluationReport:
    """The study-style closed-set figure: the protocol run on the very rows the transformer was
    fitted on (``mapped`` = its output for ``fit_pairs``). Labelled CLOSED-SET everywhere."""
    return _evaluate(pairs=fit_pairs, mapped=mapped, protocol=PROTOCOL_CLOSED_SET)
