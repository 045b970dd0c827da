"""Open-set (1:N) evaluation, measured the way NIST FRVT 1:N does (docs/PROTOCOL.md).

Split of the evaluated identities (:func:`open_set_split`): identities with >= 2 images are
**enrolled** when ``sha1("openset" + name)`` is even (the hex digest read as an integer), else
**strangers**. An enrolled identity's image whose ``path`` sorts first is its template (in the
gallery) and its other images are **mated** searches; every image of a stranger is a
**non-mated** search; single-image identities stay in the gallery as distractors. Without a
``name`` column the label (as text) stands in for the name.

Metrics (pure functions in :mod:`service.evaluation.metrics` conventions; naive references in
the tests): a search's result is its top-1 gallery entry and score.
- :func:`fnir_at_fpir`: the threshold is chosen on the non-mated top-1 scores like
  :func:`metrics.tar_at_far` chooses it on impostors (accepted when ``score > t``, realised FPIR
  never above the target); FNIR = mated searches whose top-1 is the wrong identity or scores
  ``<= t``.
- :func:`rates_at_threshold`: FPIR and FNIR of a given threshold under the SERVICE's rule
  (``match`` when ``score >= threshold``).
- The service's default rule (:class:`ServiceRule`): the calibrated threshold for the target
  FPIR (default 1%) at this gallery's size (:func:`service.decision.open_set_threshold`), and
  the FPIR/FNIR it actually gives here.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from service.contracts import PairsSet
from service.decision import ScoreCalibration, estimated_fpir, open_set_threshold
from service.errors import InvalidInput
from service.evaluation.metrics import accepted_count_at_far
from service.evaluation.protocol import (
    ROW_MAPPED,
    ROW_NEW_NEW,
    ROW_OLD_OLD,
    GalleryAndProbes,
    MappedRows,
    as_mapped_rows,
    mapped_vectors,
)
from service.vectors import l2_normalize

OPEN_SET_SALT = "openset"
FPIR_TARGETS = (0.1, 0.01, 0.001)
DEFAULT_TARGET_FPIR = 0.01


def is_enrolled(name: str) -> bool:
    """The fixed open-set split: ``int(sha1("openset" + name).hexdigest(), 16)`` is even."""
    return int(hashlib.sha1((OPEN_SET_SALT + name).encode("utf-8")).hexdigest(), 16) % 2 == 0


@dataclass(frozen=True)
class OpenSetSplit(GalleryAndProbes):
    """The protocol's gallery/probe rows (``probe_rows`` = the mated searches: the enrolled
    identities' other images) plus ``nonmated_rows``: every image of the strangers."""

    nonmated_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def mated_rows(self) -> np.ndarray:
        return self.probe_rows

    def counts(self) -> dict[str, int]:
        base = super().counts()
        return {
            "templates": base["templates"],
            "distractors": base["distractors"],
            "mated_searches": base["probes"],
            "nonmated_searches": int(self.nonmated_rows.size),
        }


def open_set_split(pairs: PairsSet) -> OpenSetSplit:
    """Enrolled / strangers / distractors (module docstring)."""
    labels = np.asarray(pairs.label)
    names = np.asarray(pairs.name).astype(str) if pairs.name is not None else labels.astype(str)
    paths = np.asarray(pairs.path).astype(str) if pairs.path is not None else None
    _, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    multi = counts[index] >= 2
    enrolled_by_name = {n: is_enrolled(n) for n in np.unique(names[multi])}
    enrolled = multi & np.array([enrolled_by_name.get(n, False) for n in names], dtype=bool)
    rows = np.flatnonzero(enrolled)
    order = np.lexsort((rows, paths[rows] if paths is not None else rows, labels[rows]))
    rows = rows[order]
    first = np.r_[True, labels[rows][1:] != labels[rows][:-1]]
    return OpenSetSplit(
        template_rows=np.sort(rows[first]),
        distractor_rows=np.flatnonzero(~multi),
        probe_rows=np.sort(rows[~first]),
        nonmated_rows=np.flatnonzero(multi & ~enrolled),
    )


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchResults:
    """Top-1 of every search: mated scores + whether the identity is right; non-mated scores."""

    mated_score: np.ndarray
    mated_correct: np.ndarray
    nonmated_score: np.ndarray


def fpir_threshold(nonmated_score: np.ndarray, fpir: float) -> float:
    """The lowest threshold ``t`` (accept ``score > t``) whose FPIR is <= ``fpir``."""
    scores = np.asarray(nonmated_score, dtype=np.float64)
    allowed = accepted_count_at_far(scores.size, fpir)
    if allowed >= scores.size:
        return float("-inf")
    position = scores.size - 1 - allowed
    return float(np.partition(scores, position)[position])


def fnir_at_fpir(results: SearchResults, fpir: float) -> tuple[float, float]:
    """(FNIR, threshold) at ``fpir``: module docstring. FNIR is a fraction."""
    t = fpir_threshold(results.nonmated_score, fpir)
    hit = results.mated_correct & (results.mated_score > t)
    return float(1.0 - hit.mean()), t


def rates_at_threshold(results: SearchResults, threshold: float) -> tuple[float, float]:
    """(FPIR, FNIR) of ``threshold`` under the service's rule (match when score >= t)."""
    fpir = float(np.mean(results.nonmated_score >= threshold))
    fnir = float(1.0 - np.mean(results.mated_correct & (results.mated_score >= threshold)))
    return fpir, fnir


def det_curve(results: SearchResults) -> tuple[np.ndarray, np.ndarray]:
    """(FPIR, FNIR) at every non-mated score taken as the threshold (accept ``score > t``),
    plus the strictest point; FPIR descending."""
    thresholds = np.r_[np.sort(results.nonmated_score), np.inf]
    nonmated = np.sort(results.nonmated_score)
    fpir = 1.0 - np.searchsorted(nonmated, thresholds, side="right") / nonmated.size
    correct = np.sort(results.mated_score[results.mated_correct])
    hits = correct.size - np.searchsorted(correct, thresholds, side="right")
    return fpir, 1.0 - hits / results.mated_score.size


def search(
    probes: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray, probe_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-1 (score, correct) of every probe by inner product (chunked NumPy)."""
    scores, correct = [], []
    for start in range(0, probes.shape[0], 2048):
        sims = probes[start : start + 2048] @ gallery.T
        best = np.argmax(sims, axis=1)
        scores.append(sims[np.arange(best.size), best])
        correct.append(gallery_labels[best] == probe_labels[start : start + 2048])
    return np.concatenate(scores), np.concatenate(correct)


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceRule:
    """The service's default decision on this gallery, and what it gave."""

    target_fpir: float
    gallery_faces: int
    threshold: float
    fpir: float
    fnir: float
    false_matches: int
    nonmated_searches: int
    model_fpir: float  # what the calibration predicts for this threshold and size


@dataclass
class OpenSetReport:
    counts: dict[str, int]
    fnir: dict[str, dict[float, float]]  # row -> {target FPIR: FNIR}
    thresholds: dict[str, dict[float, float]]
    service_rule: ServiceRule | None = None
    results: dict[str, SearchResults] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": "sha1('openset' + name) even = enrolled (docs/PROTOCOL.md)",
            "counts": self.counts,
            "fnir_at_fpir": {r: {str(k): v for k, v in d.items()} for r, d in self.fnir.items()},
            "thresholds": {
                r: {str(k): (v if np.isfinite(v) else None) for k, v in d.items()}
                for r, d in self.thresholds.items()
            },
            "service_rule": None if self.service_rule is None else asdict(self.service_rule),
        }

    def to_markdown(self) -> str:
        c = self.counts
        lines = [
            f"Open-set (1:N, docs/PROTOCOL.md): gallery {c['templates']} enrolled templates + "
            f"{c['distractors']} distractors; {c['mated_searches']} mated searches, "
            f"{c['nonmated_searches']} non-mated (strangers).",
            "",
            "| row | " + " | ".join(f"FNIR@FPIR={100 * f:g}%" for f in FPIR_TARGETS) + " |",
            "|---|" + "---|" * len(FPIR_TARGETS),
        ]
        for row, values in self.fnir.items():
            cells = " | ".join(f"{100 * values[f]:.2f}" for f in FPIR_TARGETS)
            lines.append(f"| {row} | {cells} |")
        rule = self.service_rule
        if rule is not None:
            lines += [
                "",
                f"Service default rule (mapped): target FPIR {100 * rule.target_fpir:g}% at "
                f"{rule.gallery_faces} gallery faces -> threshold {rule.threshold:.4f}; realised "
                f"FPIR {100 * rule.fpir:.2f}% ({rule.false_matches}/{rule.nonmated_searches}), "
                f"FNIR {100 * rule.fnir:.2f}% (model's FPIR {100 * rule.model_fpir:.2f}%).",
            ]
        return "\n".join(lines) + "\n"


def evaluate_open_set(
    *,
    eval_pairs: PairsSet,
    mapped: MappedRows | None,
    calibration: ScoreCalibration | None = None,
    target_fpir: float = DEFAULT_TARGET_FPIR,
) -> OpenSetReport:
    """FNIR at FPIR 10/1/0.1% for old/old, new/new and mapped (when given), and the service's
    default rule on the mapped row (when ``calibration`` is given)."""
    mapped = as_mapped_rows(eval_pairs, mapped)
    split = open_set_split(eval_pairs)
    if split.template_rows.size == 0 or split.nonmated_rows.size == 0 or not split.mated_rows.size:
        raise InvalidInput("open-set evaluation needs enrolled identities and strangers")
    labels = np.asarray(eval_pairs.label)
    gallery_rows = split.gallery_rows
    searches = np.concatenate([split.mated_rows, split.nonmated_rows])
    n_mated = split.mated_rows.size
    old_gallery = l2_normalize(eval_pairs.old[gallery_rows])
    vectors = {
        ROW_OLD_OLD: (l2_normalize(eval_pairs.old[searches]), old_gallery),
        ROW_NEW_NEW: (
            l2_normalize(eval_pairs.new[searches]),
            l2_normalize(eval_pairs.new[gallery_rows]),
        ),
    }
    if mapped is not None:
        vectors[ROW_MAPPED] = mapped_vectors(
            mapped, query_rows=searches, gallery_rows=gallery_rows, old_gallery=old_gallery
        )
    report = OpenSetReport(counts=split.counts(), fnir={}, thresholds={})
    for row, (probes, gallery) in vectors.items():
        score, correct = search(probes, gallery, labels[gallery_rows], labels[searches])
        results = SearchResults(score[:n_mated], correct[:n_mated], score[n_mated:])
        report.results[row] = results
        pairs = {f: fnir_at_fpir(results, f) for f in FPIR_TARGETS}
        report.fnir[row] = {f: v[0] for f, v in pairs.items()}
        report.thresholds[row] = {f: v[1] for f, v in pairs.items()}
    if mapped is not None and calibration is not None:
        report.service_rule = service_rule(
            report.results[ROW_MAPPED],
            calibration=calibration,
            target_fpir=target_fpir,
            gallery_faces=int(gallery_rows.size),
        )
    return report


def service_rule(
    results: SearchResults, *, calibration: ScoreCalibration, target_fpir: float, gallery_faces: int
) -> ServiceRule:
    """The service's calibrated threshold for this gallery and the rates it gives here."""
    t = open_set_threshold(
        calibration=calibration, target_fpir=target_fpir, gallery_faces=gallery_faces
    )
    fpir, fnir = rates_at_threshold(results, t)
    return ServiceRule(
        target_fpir=target_fpir,
        gallery_faces=gallery_faces,
        threshold=t,
        fpir=fpir,
        fnir=fnir,
        false_matches=int(np.sum(results.nonmated_score >= t)),
        nonmated_searches=int(results.nonmated_score.size),
        model_fpir=estimated_fpir(
            calibration=calibration, threshold=t, gallery_faces=gallery_faces
        ),
    )


def open_set_of_fit(
    fitted: Any, *, fit_pairs: PairsSet, eval_pairs: PairsSet, flip: bool, space: str = "old"
) -> OpenSetReport | None:
    """The open-set report of a fitted transformer (``map_rows``) with the calibration the fit
    CLI would store (its fit rows); None when the eval set has no open-set split (e.g. a small
    synthetic set without strangers)."""
    from training.evaluation.calibration import calibrate

    try:
        mapped = fitted.map_rows(eval_pairs, flip=flip)
        calibration = calibrate(fit_pairs, fitted.map_rows(fit_pairs, flip=flip), space=space)
        return evaluate_open_set(eval_pairs=eval_pairs, mapped=mapped, calibration=calibration)
    except InvalidInput:
        return None


def plot_det(report: OpenSetReport, path: Any, *, title: str = "DET (open-set)") -> None:
    """FNIR vs FPIR on log axes, one line per row; the service rule's operating point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.4), dpi=100)
    floor = 0.5 / max(report.counts["nonmated_searches"], 1)
    for row, results in report.results.items():
        fpir, fnir = det_curve(results)
        keep = fpir > 0  # log axes: the strictest point (no false match at all) has FPIR 0
        ax.step(fpir[keep], np.maximum(fnir[keep], 1e-4), where="post", label=row)
    rule = report.service_rule
    if rule is not None:
        ax.plot(
            max(rule.fpir, floor),
            max(rule.fnir, 1e-4),
            "k*",
            markersize=11,
            label=f"service rule (target FPIR {100 * rule.target_fpir:g}%)",
        )
    for f in FPIR_TARGETS:
        ax.axvline(f, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FPIR (non-mated searches with a false match)")
    ax.set_ylabel("FNIR (mated searches missed)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
