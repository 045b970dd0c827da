"""``facebridge transformer fit|evaluate``. Torch is imported inside the commands only."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from service.contracts import KIT_NEW_MODEL_ID, KIT_OLD_MODEL_ID, SPLIT_BRIDGE, SPLIT_EVAL
from service.errors import InvalidInput

app = typer.Typer(
    help="Fit, export and evaluate transformers (new-model -> old-model mapping networks).",
    no_args_is_help=True,
)

PairsOpt = Annotated[Path, typer.Option("--pairs", help="pairs file (.npz or dir of .npy)")]
FitPairsOpt = Annotated[
    list[Path],
    typer.Option(
        "--pairs",
        help="pairs file (.npz or dir of .npy); repeat to add files (e.g. exported captures): "
        "their bridge rows are fitted too, the FIRST file's eval rows evaluate",
    ),
]
PairsRepeatOpt = Annotated[
    int,
    typer.Option(
        "--pairs-repeat",
        min=1,
        help="oversampling: each fit row of the 2nd and later --pairs files counts N times",
    ),
]
AllRowsOpt = Annotated[
    bool, typer.Option("--all-rows", help="ignore the split column and use every row")
]
FlipOpt = Annotated[
    bool,
    typer.Option(
        "--flip/--no-flip",
        help="flip-averaged queries when the pairs carry new_flip (--no-flip: plain queries)",
    ),
]


CalibrationFoldsOpt = Annotated[
    int,
    typer.Option(
        "--calibration-folds",
        min=0,
        help="identity folds for the cross-fitted open-set calibration (0 or 1: in-sample)",
    ),
]


def _load_split(path: Path, split: str, all_rows: bool) -> Any:
    from service.contracts import load_pairs
    from training.transformers.multi_pairs import select_rows

    return select_rows(load_pairs(path), split, all_rows)


def _resolve_recipe(recipe: str | None, config: Path | None) -> Any:
    from training.transformers.recipes import get_recipe, load_recipe_file

    if recipe and config:
        raise InvalidInput("give --recipe or --config, not both")
    if config is not None:
        return load_recipe_file(config)
    return get_recipe(recipe or "default")


def _evaluation_metrics(pairs_path: Path, transformer: Path, *, flip: bool) -> dict[str, float]:
    """Eval-split metrics of an exported transformer via the protocol (mapped row only)."""
    report = evaluate_artefact(
        pairs_path=pairs_path, transformer_path=transformer, all_rows=False, flip=flip
    )
    mapped, open_set = report.row("mapped"), report.open_set
    metrics = {
        "eval_top1": round(float(mapped.top1), 2),
        "eval_top5": round(float(mapped.top5), 2),
        "eval_tar_at_far_1e3": round(float(mapped.tar_at_far_1e3), 2),
        "eval_fnir_at_fpir_1e2": round(100.0 * open_set.fnir["mapped"][0.01], 2),
    }
    if open_set.service_rule is not None:
        metrics["eval_service_rule_fpir"] = round(100.0 * open_set.service_rule.fpir, 2)
    return metrics


def evaluate_artefact(
    *, pairs_path: Path, transformer_path: Path, all_rows: bool, flip: bool = True
) -> Any:
    """Run an exported ONNX through ``TransformerRunner`` on the eval rows -> EvaluationReport
    (its ``open_set`` holds the open-set figures).

    Scored as the service scores: two-way fused when the file is two-way; flip-averaged queries
    when the pairs carry ``new_flip`` and ``flip`` is on. The open-set report applies the file's
    own calibration (the service's default rule) when it has one.
    """
    from service.evaluation.protocol import evaluate_mapping, runner_rows
    from service.inference.transformer import TransformerRunner
    from training.evaluation.openset import evaluate_open_set

    pairs = _load_split(pairs_path, SPLIT_EVAL, all_rows)
    runner = TransformerRunner(transformer_path, intra_op_threads=2)
    if runner.input_dim != pairs.new_dim or runner.output_dim != pairs.old_dim:
        raise InvalidInput(
            f"transformer maps {runner.input_dim} -> {runner.output_dim} but the pairs are "
            f"new {pairs.new_dim} / old {pairs.old_dim}"
        )
    mapped = runner_rows(pairs, runner=runner, flip=flip)
    calibration = runner.metadata.calibration_for(queries=mapped.query_kind)
    report = evaluate_mapping(eval_pairs=pairs, mapped=mapped)
    report.open_set = evaluate_open_set(eval_pairs=pairs, mapped=mapped, calibration=calibration)
    return report


def _calibrations(
    fitted: Any, fit_pairs: Any, space: str, flip: bool, folds: int, seed: int
) -> list[Any]:
    """The open-set calibrations for the file (training.transformers.calibrate), or none with
    a warning line when the fit rows cannot give one (e.g. too few impostor pairs)."""
    from training.transformers.calibrate import fit_calibrations

    try:
        return fit_calibrations(fitted, fit_pairs, space=space, flip=flip, folds=folds, seed=seed)
    except InvalidInput as exc:  # ContractError included
        typer.echo(f"WARNING: no open-set calibration ({exc}); the service will fall back")
        return []


def _fit_rows(pairs: list[Path], *, all_rows: bool, repeat: int) -> tuple[Any, Any, Any]:
    """(the first file, the combined fit rows, the training rows) of ``--pairs`` files, saying
    what was combined (training.transformers.multi_pairs)."""
    from service.contracts import load_pairs
    from training.transformers.multi_pairs import combine_pairs, eval_overlap, select_rows

    files = [load_pairs(p) for p in pairs]
    parts = [select_rows(f, SPLIT_BRIDGE, all_rows) for f in files]
    combined = combine_pairs(parts, sources=[str(p) for p in pairs])
    for note in combined.notes + eval_overlap(files[0], combined, all_rows=all_rows):
        typer.echo(f"note: {note}")
    if len(pairs) > 1:
        sizes = np.bincount(combined.source, minlength=len(pairs)).tolist()
        typer.echo(f"fit rows per --pairs file: {sizes} (later files x{repeat})")
    return files[0], combined.pairs, combined.training(repeat=repeat)


def _native_calibrations(fit_pairs: Any, space: str, flip: bool) -> list[Any]:
    """The native new/new calibration (service.migration.fusion), or none with a warning."""
    from training.transformers.calibrate import native_calibrations

    try:
        return native_calibrations(fit_pairs, space=space, flip=flip)
    except InvalidInput as exc:  # ContractError included
        typer.echo(f"WARNING: no open-set calibration ({exc}); the service will fall back")
        return []


@app.command("fit")
def fit_command(
    pairs: FitPairsOpt,
    output: Annotated[Path, typer.Option("--output", help="ONNX file to write")],
    recipe: Annotated[str | None, typer.Option("--recipe", help="registered recipe name")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="recipe config (.toml/.yaml, base+override)")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda")] = "cpu",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    all_rows: AllRowsOpt = False,
    source_model: Annotated[
        str, typer.Option("--source-model", help="new backbone's model id (metadata)")
    ] = KIT_NEW_MODEL_ID,
    target_model: Annotated[
        str, typer.Option("--target-model", help="old model's id (metadata)")
    ] = KIT_OLD_MODEL_ID,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    threads: Annotated[int, typer.Option("--threads", help="torch intra-op threads", min=1)] = 1,
    flip: FlipOpt = True,
    calibration_folds: CalibrationFoldsOpt = 5,
    pairs_repeat: PairsRepeatOpt = 1,
) -> None:
    """Fit on the bridge rows (all rows with --all-rows) of every --pairs file, export ONNX,
    validate, checksum (several files: training.transformers.multi_pairs).

    The file carries the open-set calibration of its score (cross-fitted on the fit rows),
    which the service's match rule needs (docs/service.md)."""
    from service.decision import describe as describe_calibrations
    from service.evaluation.protocol import ROW_MAPPED, closed_set_report
    from training.transformers.export import default_metadata, export_transformer
    from training.transformers.fit import fit_normalized

    resolved = _resolve_recipe(recipe, config)
    primary = pairs[0]
    all_pairs, fit_pairs, train = _fit_rows(pairs, all_rows=all_rows, repeat=pairs_repeat)
    typer.echo(f"fitting {resolved.name!r} on {len(train)} rows ({resolved.model}, {device})")
    fitted = fit_normalized(
        train=train, recipe=resolved, device=device, seed=seed, progress=progress
    )
    # Recommended threshold: the protocol's score at FAR=1e-3, mapped probes vs old templates
    # scored as the service scores them (fused when two-way), on the rows it was fitted on
    # (closed-set); eval rows never decide it.
    closed = closed_set_report(fit_pairs=fit_pairs, mapped=fitted.map_rows(fit_pairs, flip=flip))
    threshold = closed.row(ROW_MAPPED).threshold_at_far_1e3
    calibrations = _calibrations(fitted, fit_pairs, target_model, flip, calibration_folds, seed)
    calibrations += _native_calibrations(fit_pairs, source_model, flip)
    metadata = functools.partial(
        default_metadata,
        fitted,
        source_model=source_model,
        target_model=target_model,
        threshold=threshold,
        calibrations=calibrations,
        validation_new=fit_pairs.new,
    )
    report = export_transformer(fitted, output, metadata=metadata())
    metrics: dict[str, float] = {}
    has_eval = all_pairs.split is not None and bool((all_pairs.split == SPLIT_EVAL).any())
    if has_eval and not all_rows:
        # Evaluate the exported file itself, then write it again with the figures inside.
        metrics = _evaluation_metrics(primary, output, flip=flip)
        metrics["fit_seconds"] = round(fitted.fit_seconds, 2)
        report = export_transformer(fitted, output, metadata=metadata(metrics=metrics))
    typer.echo(
        f"fitted in {fitted.fit_seconds:.1f} s; threshold (FAR=1e-3, fit rows, "
        f"{closed.queries} queries, {closed.scoring}) "
        + ("n/a" if threshold is None else f"{threshold:.4f}")
    )
    for line in describe_calibrations(calibrations):
        typer.echo(f"open-set calibration: {line}")
    if metrics:
        typer.echo("eval split: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
    parity = ", ".join(f"b{k}={v:.6f}" for k, v in report.parity.items())
    if report.parity_backward:
        parity += "; backward " + ", ".join(
            f"b{k}={v:.6f}" for k, v in report.parity_backward.items()
        )
    typer.echo(f"parity (min cosine torch vs ORT): {parity}")
    typer.echo(f"wrote {report.path} ({report.size_bytes} bytes) sha256 {report.sha256}")


@app.command("evaluate")
def evaluate_command(
    pairs: PairsOpt,
    transformer: Annotated[Path, typer.Option("--transformer", help="exported ONNX")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    all_rows: AllRowsOpt = False,
    flip: FlipOpt = True,
    det_plot: Annotated[
        Path | None, typer.Option("--det-plot", help="write the open-set DET plot (PNG) here")
    ] = None,
) -> None:
    """Evaluate an exported transformer on the eval rows (all rows with --all-rows): the
    closed-set rows of docs/PROTOCOL.md and the open-set (1:N) figures."""
    report = evaluate_artefact(
        pairs_path=pairs, transformer_path=transformer, all_rows=all_rows, flip=flip
    )
    if det_plot is not None:
        from training.evaluation.openset import plot_det

        det_plot.parent.mkdir(parents=True, exist_ok=True)
        plot_det(report.open_set, det_plot, title=f"DET, open-set: {transformer.name}")
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        typer.echo(report.to_markdown())
    if det_plot is not None:
        typer.echo(f"DET plot: {det_plot}")
