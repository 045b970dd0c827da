"""Experiment grids: fit each run of a config with the transformer recipes, evaluate it with the
protocol, and collect the results for :mod:`training.evaluation.report`.

A config (YAML or TOML) is a base + per-run overrides::

    name: study
    data: {pairs: kit}          # "kit" (synthetic when the kit is absent), "synthetic" or a path
    seeds: [0]
    base: {epochs: 20}          # recipe fields applied to every run
    runs:
      - {label: "FC, no interpolation", recipe: study-fc, study_top1: 76.98}
      - {label: "sorted 25%", recipe: study-sorted-25-mixed, overrides: {epochs: 10}}

Each run's recipe = registered ``recipe`` <- ``base`` <- ``overrides``. Importing this module
imports neither torch nor FAISS.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.contracts import SPLIT_BRIDGE, SPLIT_EVAL, PairsSet, load_pairs
from service.errors import FacebridgeError, InvalidInput
from service.evaluation.protocol import (
    ROW_MAPPED,
    ROW_NAMES,
    EvaluationReport,
    closed_set_report,
    evaluate_mapping,
)
from service.kit import find_kit_dir, kit_pairs_path
from training.config_files import read_config_mapping
from training.evaluation.synthetic import SYNTHETIC_SOURCE, synthetic_pairs

if TYPE_CHECKING:
    from training.transformers.data import TrainingPairs

DEFAULT_THREADS = 1  # torch intra-op threads: more were 12-15x slower on a busy shared CPU


class SyntheticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_identities: int = Field(120, ge=4)
    max_images: int = Field(6, ge=2)
    d_new: int = Field(32, ge=2)
    d_old: int = Field(32, ge=2)
    seed: int = 0


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pairs: str = "kit"  # "kit", "synthetic" or a pairs file path
    synthetic: SyntheticConfig = SyntheticConfig()
    eval_fraction: float = Field(0.4, gt=0.0, lt=1.0)  # only when the file has no split


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    recipe: str
    overrides: dict[str, Any] = {}
    study_top1: float | None = None  # the original study's figure, for the side-by-side
    use_base: bool = True  # closed-form rows may opt out of the learned-run base overrides


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    data: DataConfig = DataConfig()
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    device: str = "cpu"
    threads: int = Field(DEFAULT_THREADS, ge=1)
    closed_set: bool = True
    # flip-averaged queries when the pairs carry new_flip (what the service sends); False = plain
    flip: bool = True
    base: dict[str, Any] = {}
    runs: list[RunConfig] = Field(min_length=1)
    notes: list[str] = []


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML/TOML experiment config (one-line InvalidInput on problems)."""
    p = Path(path)
    data = read_config_mapping(p, what="experiment config")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise InvalidInput(f"{p}: {problems}") from exc


@dataclass(frozen=True)
class ExperimentData:
    bridge: PairsSet
    evaluation: PairsSet
    source: str  # human-readable: the kit file, a path, or the SYNTHETIC warning
    synthetic: bool


def _split(pairs: PairsSet, *, eval_fraction: float, seed: int) -> tuple[PairsSet, PairsSet]:
    if pairs.split is not None and {SPLIT_BRIDGE, SPLIT_EVAL} <= set(np.unique(pairs.split)):
        return pairs.select_split(SPLIT_BRIDGE), pairs.select_split(SPLIT_EVAL)
    labels = np.unique(pairs.label)
    rng = np.random.default_rng(seed)
    held = rng.choice(labels, size=max(1, round(eval_fraction * labels.size)), replace=False)
    mask = np.isin(pairs.label, held)
    return pairs.take(np.flatnonzero(~mask)), pairs.take(np.flatnonzero(mask))


def load_experiment_data(
    data: DataConfig, *, pairs_override: Path | None = None, force_synthetic: bool = False
) -> ExperimentData:
    """The bridge/eval sets a config asks for; synthetic (said loudly) when the kit is absent."""
    source: str
    pairs: PairsSet | None = None
    wanted = "synthetic" if force_synthetic else str(pairs_override or data.pairs)
    if wanted == "kit":
        kit = find_kit_dir()
        if kit is not None:
            path = kit_pairs_path(kit)
            pairs, source = load_pairs(path), f"sample kit: {path}"
        else:
            wanted = "synthetic"
    elif wanted != "synthetic":
        pairs, source = load_pairs(Path(wanted)), f"pairs file: {wanted}"
    synthetic = pairs is None
    if pairs is None:
        pairs = synthetic_pairs(**data.synthetic.model_dump())
        reason = "--synthetic given" if force_synthetic else "sample kit absent"
        source = SYNTHETIC_SOURCE.format(reason=reason)
    bridge, evaluation = _split(pairs, eval_fraction=data.eval_fraction, seed=0)
    return ExperimentData(bridge=bridge, evaluation=evaluation, source=source, synthetic=synthetic)


@dataclass
class RunResult:
    """One (run, seed): the recipe actually used and both reports (closed-set optional)."""

    label: str
    recipe_name: str
    recipe: dict[str, Any]
    seed: int
    study_top1: float | None
    report: EvaluationReport | None
    closed_set: EvaluationReport | None = None
    fit_seconds: float = 0.0
    error: str | None = None

    def metric(self, name: str, row: str = ROW_MAPPED) -> float | None:
        if self.report is None:
            return None
        return getattr(self.report.row(row), name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "recipe_name": self.recipe_name,
            "recipe": self.recipe,
            "seed": self.seed,
            "study_top1": self.study_top1,
            "fit_seconds": round(self.fit_seconds, 3),
            "error": self.error,
            "open_set": None if self.report is None else self.report.to_dict(),
            "closed_set": None if self.closed_set is None else self.closed_set.to_dict(),
        }


@dataclass
class ExperimentResults:
    config: ExperimentConfig
    source: str
    synthetic: bool
    runs: list[RunResult]
    reference: EvaluationReport  # old/old, new/new, raw cross on the eval split
    counts: dict[str, int]
    started_at: str
    seconds: float
    environment: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "description": self.config.description,
            "source": self.source,
            "synthetic": self.synthetic,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 1),
            "environment": self.environment,
            "counts": self.counts,
            "config": self.config.model_dump(),
            "reference": {
                name: vars(self.reference.row(name)) for name in ROW_NAMES if name != ROW_MAPPED
            },
            "runs": [r.to_dict() for r in self.runs],
        }


def resolve_recipe(run: RunConfig, base: dict[str, Any]) -> Any:
    """Registered ``run.recipe`` <- config ``base`` <- ``run.overrides`` (a Recipe)."""
    from training.transformers.recipes import get_recipe, recipe_from_dict

    registered = get_recipe(run.recipe)
    layered = {**(base if run.use_base and not registered.closed_form else {}), **run.overrides}
    if not layered:
        return registered
    return recipe_from_dict({"base": run.recipe, "name": run.recipe, **layered})


def run_experiments(
    config: ExperimentConfig,
    *,
    pairs_override: Path | None = None,
    force_synthetic: bool = False,
    progress: bool = True,
) -> ExperimentResults:
    """Fit and evaluate every (run, seed) of ``config``; failures are recorded, not raised."""
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run_all(config, pairs_override, force_synthetic, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _one_run(
    run: RunConfig,
    seed: int,
    *,
    config: ExperimentConfig,
    data: ExperimentData,
    train: TrainingPairs,
) -> RunResult:
    """Fit one run's recipe with one seed and evaluate it (open-set, and closed-set when the
    config asks); a recipe that fails is a result with its error, not an exception."""
    from training.evaluation.openset import open_set_of_fit
    from training.transformers.fit import fit_normalized

    try:
        recipe = resolve_recipe(run, config.base)
        fitted = fit_normalized(
            train=train,
            recipe=recipe,
            device=config.device,
            seed=seed,
            progress=False,
            threads=config.threads,
        )
        # scored as the service scores: the run's queries, two-way fused when fitted so
        report = evaluate_mapping(
            eval_pairs=data.evaluation, mapped=fitted.map_rows(data.evaluation, flip=config.flip)
        )
        report.open_set = open_set_of_fit(
            fitted, fit_pairs=data.bridge, eval_pairs=data.evaluation, flip=config.flip
        )
        closed = (
            closed_set_report(
                fit_pairs=data.bridge, mapped=fitted.map_rows(data.bridge, flip=config.flip)
            )
            if config.closed_set
            else None
        )
    except FacebridgeError as exc:
        return RunResult(
            label=run.label,
            recipe_name=run.recipe,
            recipe={},
            seed=seed,
            study_top1=run.study_top1,
            report=None,
            error=str(exc),
        )
    return RunResult(
        label=run.label,
        recipe_name=recipe.name,
        recipe=recipe.to_dict(),
        seed=seed,
        study_top1=run.study_top1,
        report=report,
        closed_set=closed,
        fit_seconds=fitted.fit_seconds,
    )


def _run_all(
    config: ExperimentConfig, pairs_override: Path | None, force_synthetic: bool, progress: bool
) -> ExperimentResults:
    import torch
    from tqdm import tqdm

    from training.transformers.data import normalized_pairs

    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    clock = time.perf_counter()
    data = load_experiment_data(
        config.data, pairs_override=pairs_override, force_synthetic=force_synthetic
    )
    reference = evaluate_mapping(eval_pairs=data.evaluation, mapped=None)
    train = normalized_pairs(data.bridge)
    jobs = [(run, seed) for run in config.runs for seed in config.seeds]
    results: list[RunResult] = []
    bar = tqdm(jobs, desc=f"experiments {config.name}", unit="run", disable=not progress)
    for run, seed in bar:
        bar.set_postfix_str(f"{run.label} (seed {seed})")
        results.append(_one_run(run, seed, config=config, data=data, train=train))
    split_counts = {
        "bridge_rows": len(data.bridge),
        "bridge_identities": int(np.unique(data.bridge.label).size),
        "eval_rows": len(data.evaluation),
        "eval_identities": int(np.unique(data.evaluation.label).size),
        "templates": reference.templates,
        "distractors": reference.distractors,
        "probes": reference.probes,
    }
    return ExperimentResults(
        config=config,
        source=data.source,
        synthetic=data.synthetic,
        runs=results,
        reference=reference,
        counts=split_counts,
        started_at=started_at,
        seconds=time.perf_counter() - clock,
        environment={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": str(config.threads),
            "device": config.device,
            "machine": platform.machine(),
        },
    )


def summarise(results: ExperimentResults) -> list[dict[str, Any]]:
    """One row per run label: metrics averaged over seeds (std of mapped top-1 when > 1 seed)."""
    rows: list[dict[str, Any]] = []
    for label in dict.fromkeys(r.label for r in results.runs):
        group = [r for r in results.runs if r.label == label]
        ok = [r for r in group if r.report is not None]
        first = group[0]
        row: dict[str, Any] = {
            "label": label,
            "recipe": first.recipe_name,
            "study_top1": first.study_top1,
            "seeds": len(group),
            "error": next((r.error for r in group if r.error), None),
            "interpolation": first.recipe.get("interpolation", "none"),
            "interpolation_rate": first.recipe.get("interpolation_rate", 0.0),
            "schedule": first.recipe.get("interpolation_schedule", "mixed"),
            "model": first.recipe.get("model", "?"),
            "epochs": first.recipe.get("epochs"),
        }

        def mean(values: list[float | None]) -> float | None:
            kept = [v for v in values if v is not None]
            return float(np.mean(kept)) if kept else None

        reports: list[EvaluationReport] = [r.report for r in ok if r.report is not None]
        row["queries"] = reports[0].queries if reports else None
        row["scoring"] = reports[0].scoring if reports else None
        for metric in ("top1", "top5", "tar_at_far_1e3"):
            row[metric] = mean([getattr(rep.row(ROW_MAPPED), metric) for rep in reports])
        top1s = [rep.row(ROW_MAPPED).top1 for rep in reports]
        row["top1_std"] = float(np.std(top1s)) if len(top1s) > 1 else None
        row["gap_closed"] = mean([rep.gap_closed for rep in reports])
        row["compatible"] = None if not reports else all(bool(rep.compatible) for rep in reports)
        row["closed_set_top1"] = mean(
            [r.closed_set.row(ROW_MAPPED).top1 for r in ok if r.closed_set is not None]
        )
        open_sets = [rep.open_set for rep in reports if rep.open_set is not None]
        for fpir in (0.1, 0.01, 0.001):
            row[f"fnir_at_fpir_{fpir:g}"] = mean([o.fnir[ROW_MAPPED][fpir] for o in open_sets])
        rules = [o.service_rule for o in open_sets if o.service_rule is not None]
        row["service_fpir"] = mean([r.fpir for r in rules])
        row["service_fnir"] = mean([r.fnir for r in rules])
        row["fit_seconds"] = mean([r.fit_seconds for r in ok])
        rows.append(row)
    return rows
