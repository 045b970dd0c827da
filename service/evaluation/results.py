"""The protocol's report: one :class:`RowMetrics` per row, the criterion, the paired test, and
its JSON and Markdown forms."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.evaluation.metrics import PairedComparison


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
