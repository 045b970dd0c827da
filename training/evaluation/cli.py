"""``facebridge experiments ...``: run an experiment grid and write its report directory.

torch and matplotlib are imported inside the commands only.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Experiment grids: fit recipes, evaluate by the protocol, write reports.",
    no_args_is_help=True,
)


@app.callback()
def experiments() -> None:
    """Experiment grids: fit recipes, evaluate by the protocol, write reports."""


@app.command("run")
def run_command(
    config: Annotated[Path, typer.Argument(help="experiment config (.yaml/.yml/.toml)")],
    output: Annotated[Path, typer.Option("--output", help="report directory to write")],
    pairs: Annotated[
        Path | None,
        typer.Option("--pairs", help="pairs file to use instead of the config's data.pairs"),
    ] = None,
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="use the synthetic set even if the kit exists")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Fit every run of CONFIG on the bridge rows, evaluate on the eval rows, write the report."""
    from training.evaluation.experiments import load_experiment_config, run_experiments
    from training.evaluation.report import results_table, write_report

    experiment = load_experiment_config(config)
    results = run_experiments(
        experiment, pairs_override=pairs, force_synthetic=synthetic, progress=progress
    )
    parts = [str(config), "--output", str(output)]
    parts += ["--pairs", str(pairs)] if pairs else []
    parts += ["--synthetic"] if synthetic else []
    command = "facebridge experiments run " + shlex.join(parts)
    written = write_report(results, output, command=command)
    if results.synthetic:
        typer.echo(f"WARNING: {results.source}")
    typer.echo(results_table(results))
    typer.echo(f"report: {written['report.md']}")
