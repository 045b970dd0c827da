"""Write an experiment's report directory: ``report.md``, ``results.json`` and PNG plots.

matplotlib (Agg backend) is imported inside the plotting functions only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from service.evaluation.protocol import (
    PROTOCOL_CLOSED_SET,
    PROTOCOL_OPEN_SET,
    ROW_MAPPED,
    ROW_NEW_NEW,
    ROW_OLD_OLD,
    ROW_RAW_CROSS,
    SCORING_FORWARD,
    format_percent,
    format_ratio,
)
from training.evaluation.experiments import ExperimentResults, RunResult, summarise

TOP1_PLOT = "top1_vs_interpolation.png"
DET_PLOT = "det.png"
DET_MAX_RUNS = 6


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "run"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def results_table(results: ExperimentResults) -> str:
    """The runs table (Markdown): open-set metrics, the study's figure, the closed-set figure."""
    old_top1 = results.reference.row(ROW_OLD_OLD).top1
    lines = [
        "| run | recipe | epochs | study top-1 (closed-set, their data) | top-1 | top-5 | "
        "TAR@FAR=1e-3 | top-1 - old/old | gap closed | compatible | closed-set top-1 "
        "(study-style) | fit s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summarise(results):
        if row["error"] and row["top1"] is None:
            lines.append(
                f"| {row['label']} | {row['recipe']} | | {format_percent(row['study_top1'])} | "
                f"failed: {row['error']} | | | | | | | |"
            )
            continue
        top1 = format_percent(row["top1"])
        if row["top1_std"] is not None:
            top1 += f" ± {row['top1_std']:.2f}"
        delta = None if row["top1"] is None or old_top1 is None else row["top1"] - old_top1
        compatible = {None: "n/a", True: "yes", False: "no"}[row["compatible"]]
        epochs = "-" if row["model"] in ("identity", "ridge", "procrustes") else row["epochs"]
        recipe = row["recipe"]
        if row["scoring"] not in (None, SCORING_FORWARD):
            recipe += f" ({row['scoring']})"
        lines.append(
            f"| {row['label']} | {recipe} | {epochs} | "
            f"{format_percent(row['study_top1'])} | {top1} | {format_percent(row['top5'])} | "
            f"{format_percent(row['tar_at_far_1e3'])} | {_signed(delta)} | "
            f"{format_ratio(row['gap_closed'])} | {compatible} | "
            f"{format_percent(row['closed_set_top1'])} | {row['fit_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def reference_table(results: ExperimentResults) -> str:
    lines = ["| row | top-1 | top-5 | TAR@FAR=1e-3 |", "|---|---|---|---|"]
    for name in (ROW_OLD_OLD, ROW_NEW_NEW, ROW_RAW_CROSS):
        row = results.reference.row(name)
        extra = f" ({row.note})" if row.note else ""
        lines.append(
            f"| {name}{extra} | {format_percent(row.top1)} | {format_percent(row.top5)} | "
            f"{format_percent(row.tar_at_far_1e3)} |"
        )
    return "\n".join(lines) + "\n"


def _first_open_set(results: ExperimentResults) -> Any:
    return next((r.report.open_set for r in results.runs if r.report and r.report.open_set), None)


def open_set_table(results: ExperimentResults) -> str:
    """FNIR at FPIR 10/1/0.1% (reference rows, then every run's mapped row, seed means) and the
    FPIR/FNIR the service's default rule (target FPIR 1%, calibrated on the fit rows) gives."""
    first = _first_open_set(results)
    if first is None:
        return "No open-set split on this evaluation set (no strangers).\n"

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100.0 * value:.2f}"

    counts = first.counts
    lines = [
        f"Open-set split (docs/PROTOCOL.md): {counts['templates']} enrolled templates + "
        f"{counts['distractors']} distractors; {counts['mated_searches']} mated and "
        f"{counts['nonmated_searches']} non-mated searches. Service rule: target FPIR 1% at "
        "this gallery's size, calibrated on the fit rows in-sample (cheaper than the fit CLI's "
        "cross-fitted calibration and a little more conservative: docs/service.md).",
        "",
        "| row | FNIR@FPIR=10% | FNIR@FPIR=1% | FNIR@FPIR=0.1% | service rule: FPIR | FNIR |",
        "|---|---|---|---|---|---|",
    ]
    for name in (ROW_OLD_OLD, ROW_NEW_NEW):
        values = first.fnir[name]
        lines.append(
            f"| {name} | {pct(values[0.1])} | {pct(values[0.01])} | {pct(values[0.001])} | - | - |"
        )
    for row in summarise(results):
        lines.append(
            f"| {row['label']} | {pct(row.get('fnir_at_fpir_0.1'))} | "
            f"{pct(row.get('fnir_at_fpir_0.01'))} | {pct(row.get('fnir_at_fpir_0.001'))} | "
            f"{pct(row.get('service_fpir'))} | {pct(row.get('service_fnir'))} |"
        )
    return "\n".join(lines) + "\n"


def plot_open_set(results: ExperimentResults, path: Path) -> bool:
    """One DET plot: old/old, new/new and the mapped rows of the runs with the lowest
    FNIR@FPIR=1% (first seed of each label). False when there is nothing to plot."""
    from training.evaluation.openset import OpenSetReport, plot_det

    first = _first_open_set(results)
    if first is None:
        return False
    by_label: dict[str, Any] = {}
    for run in results.runs:
        if run.report is not None and run.report.open_set is not None:
            by_label.setdefault(run.label, run.report.open_set)
    best = sorted(by_label.items(), key=lambda kv: kv[1].fnir[ROW_MAPPED][0.01])[:DET_MAX_RUNS]
    combined = OpenSetReport(counts=first.counts, fnir={}, thresholds={})
    combined.results = {name: first.results[name] for name in (ROW_OLD_OLD, ROW_NEW_NEW)}
    combined.results |= {f"mapped: {label}": o.results[ROW_MAPPED] for label, o in best}
    title = "DET, open-set" + (" (SYNTHETIC data)" if results.synthetic else "")
    plot_det(combined, path, title=title)
    return True


def render_markdown(results: ExperimentResults, *, command: str | None, plots: list[str]) -> str:
    counts = results.counts
    config = results.config
    out = [f"# Experiment report: {config.name}", ""]
    if results.synthetic:
        out += [f"> **{results.source}.**", ""]
    if config.description:
        out += [config.description.strip(), ""]
    out += [
        f"- Data: {results.source}",
        f"- Split: fitted on {counts['bridge_rows']} bridge rows "
        f"({counts['bridge_identities']} identities); evaluated on {counts['eval_rows']} eval "
        f"rows ({counts['eval_identities']} identities, none seen in fitting).",
        f"- Gallery: {counts['templates']} templates + {counts['distractors']} distractors; "
        f"{counts['probes']} probes.",
        f"- Seeds: {', '.join(map(str, config.seeds))}; started {results.started_at}; "
        f"took {results.seconds:.0f} s; "
        + ", ".join(f"{k} {v}" for k, v in results.environment.items())
        + ".",
    ]
    queries = sorted({r["queries"] for r in summarise(results) if r["queries"]})
    if queries:
        out.append(
            f"- Mapped-row queries: {', '.join(queries)} (flip-averaged when the pairs carry "
            "new_flip and the config's `flip` is on); other rows use plain vectors."
        )
    if command:
        out.append(f"- Command: `{command}`")
    if config.base:
        out.append(
            "- Base overrides for learned runs: "
            + ", ".join(f"{k}={v}" for k, v in config.base.items())
        )
    out += [f"- Note: {note}" for note in config.notes]
    out += [
        "",
        "## Reference rows (eval split)",
        "",
        reference_table(results),
        "## Runs",
        "",
        f"top-1 / top-5 / TAR: {PROTOCOL_OPEN_SET} (mapped row). "
        f"The last-but-one column is the {PROTOCOL_CLOSED_SET.split(':')[0]} figure on the "
        "bridge identities, comparable in kind (not in data) to the study's own numbers.",
        "",
        results_table(results),
        "## Open-set (1:N)",
        "",
        open_set_table(results),
    ]
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(out)


def plot_top1_vs_interpolation(results: ExperimentResults, path: Path) -> None:
    """Mapped top-1 (open-set) against the interpolation rate, one line per method+schedule;
    runs without interpolation of the same model family start each line at rate 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summarise(results) if r["top1"] is not None]
    baselines = [r for r in rows if r["interpolation"] == "none" and r["model"] == "fc"]
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for r in rows:
        if r["interpolation"] != "none" and r["interpolation_rate"] > 0:
            key = f"{r['interpolation']} ({r['schedule']})"
            point = (100 * r["interpolation_rate"], r["top1"], r["top1_std"] or 0.0)
            lines.setdefault(key, []).append(point)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    base = baselines[0] if baselines else None
    base_point = None if base is None else (0.0, base["top1"], base["top1_std"] or 0.0)
    for key, points in sorted(lines.items()):
        if base_point is not None:
            points = [base_point, *points]
        xs, ys, errs = zip(*sorted(points), strict=True)
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=key)
    if base_point is not None and not lines:
        ax.errorbar(*base_point[:2], yerr=base_point[2], marker="o", label="fc, no interpolation")
    for name, style in ((ROW_OLD_OLD, "--"), (ROW_NEW_NEW, ":")):
        value = results.reference.row(name).top1
        if value is not None:
            ax.axhline(value, linestyle=style, color="grey", label=f"{name} ({value:.2f})")
    ax.set_xlabel("synthetic (interpolated) pairs, % of real training rows")
    ax.set_ylabel("mapped top-1, %, open-set (mean ± std over seeds)")
    title = "top-1 vs interpolation rate"
    if results.synthetic:
        title += " (SYNTHETIC data)"
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_scores(run: RunResult, path: Path, *, synthetic: bool) -> None:
    """Genuine/impostor cosine histograms: old/old next to this run's mapped row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert run.report is not None
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.2), dpi=100, sharey=True)
    # Shared bins over the scores' own range: dlib's cosines crowd into [0.6, 1].
    everything = np.concatenate(
        [np.concatenate(run.report.scores[n]) for n in (ROW_OLD_OLD, ROW_MAPPED)]
    )
    low, high = np.quantile(everything, [0.0005, 1.0])
    bins = np.linspace(float(low), float(high) + 1e-6, 81)
    for ax, name in zip(axes, (ROW_OLD_OLD, ROW_MAPPED), strict=True):
        genuine, impostor = run.report.scores[name]
        ax.hist(impostor, bins=bins, density=True, alpha=0.6, label="impostor")
        ax.hist(genuine, bins=bins, density=True, alpha=0.6, label="genuine")
        threshold = run.report.row(name).threshold_at_far_1e3
        if threshold is not None and np.isfinite(threshold):
            ax.axvline(threshold, color="black", linewidth=1, label="thr @ FAR=1e-3")
        label = name if name != ROW_MAPPED else f"mapped: {run.label}"
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("cosine similarity")
    axes[0].set_ylabel("density" + (" (SYNTHETIC data)" if synthetic else ""))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(
    results: ExperimentResults, output: Path, *, command: str | None = None
) -> dict[str, Path]:
    """Write ``report.md``, ``results.json`` and the PNGs into ``output``; return their paths."""
    output.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    plots: list[str] = []
    top1_path = output / TOP1_PLOT
    plot_top1_vs_interpolation(results, top1_path)
    plots.append(top1_path.name)
    if plot_open_set(results, output / DET_PLOT):
        plots.append(DET_PLOT)
    seen: set[str] = set()
    for run in results.runs:  # first seed of each label
        if run.report is None or run.label in seen:
            continue
        seen.add(run.label)
        path = output / f"scores-{slug(run.label)}.png"
        plot_scores(run, path, synthetic=results.synthetic)
        plots.append(path.name)
    data: dict[str, Any] = results.to_dict()
    data["command"] = command
    data["summary"] = summarise(results)
    json_path = output / "results.json"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    md_path = output / "report.md"
    md_path.write_text(render_markdown(results, command=command, plots=plots))
    written["report.md"], written["results.json"] = md_path, json_path
    written.update({p: output / p for p in plots})
    return written
