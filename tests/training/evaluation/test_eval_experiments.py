"""The experiments runner on the smoke config with synthetic data: md, json and png written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.errors import InvalidInput
from training.evaluation.experiments import load_experiment_config

pytest.importorskip("torch", reason="fitting transformers needs the train extra")

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "experiments"


def test_smoke_config_writes_report(tmp_path: Path) -> None:
    from training.evaluation.cli import app

    output = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(CONFIGS / "smoke.yaml"),
            "--output",
            str(output),
            "--synthetic",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output
    report = (output / "report.md").read_text()
    assert "SYNTHETIC" in report.splitlines()[2]  # said in the header
    data = json.loads((output / "results.json").read_text())
    config = load_experiment_config(CONFIGS / "smoke.yaml")
    assert data["synthetic"] is True
    assert [r["label"] for r in data["runs"]] == [r.label for r in config.runs]
    for run in data["runs"]:
        assert run["error"] is None, run
        assert set(run["open_set"]["rows"]) == {"old/old", "new/new", "raw cross", "mapped"}
        assert run["closed_set"]["protocol"].startswith("CLOSED-SET")
        assert f"| {run['label']} |" in report
    # The base overrides reached the learned runs, not the closed-form ones.
    by_label = {r["label"]: r for r in data["runs"]}
    # A two-way recipe runs in the grid and is scored fused; the others forward only.
    scoring = {r["label"]: r["open_set"]["mapped_scoring"] for r in data["runs"]}
    assert scoring.pop("two-way ridge (default)") == "two-way fused, w=0.9"
    assert set(scoring.values()) == {"forward"}
    assert "default (two-way fused, w=0.9)" in report
    assert by_label["FC no interpolation"]["recipe"]["epochs"] == config.base["epochs"]
    pngs = sorted(p.name for p in output.glob("*.png"))
    assert "top1_vs_interpolation.png" in pngs and "det.png" in pngs
    assert len(pngs) == 2 + len(config.runs)
    for png in output.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_results(tmp_path: Path) -> None:
    from training.evaluation.experiments import run_experiments

    config = load_experiment_config(CONFIGS / "smoke.yaml")
    config = config.model_copy(update={"runs": config.runs[2:3], "closed_set": False})
    first = run_experiments(config, force_synthetic=True, progress=False)
    second = run_experiments(config, force_synthetic=True, progress=False)
    assert first.runs[0].report is not None and second.runs[0].report is not None
    assert first.runs[0].report.to_dict() == second.runs[0].report.to_dict()


def test_bad_configs_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nruns: []\n")
    with pytest.raises(InvalidInput, match="runs"):
        load_experiment_config(bad)
    bad.write_text("name: x\nrunz: [{label: a, recipe: ridge}]\n")
    with pytest.raises(InvalidInput, match="runz"):
        load_experiment_config(bad)
    with pytest.raises(InvalidInput, match="not found"):
        load_experiment_config(tmp_path / "missing.yaml")


def test_unknown_recipe_is_recorded_not_raised() -> None:
    from training.evaluation.experiments import ExperimentConfig, run_experiments

    config = ExperimentConfig.model_validate(
        {
            "name": "x",
            "data": {"pairs": "synthetic", "synthetic": {"n_identities": 30}},
            "runs": [{"label": "nope", "recipe": "no-such-recipe"}],
        }
    )
    results = run_experiments(config, progress=False)
    assert results.synthetic
    assert results.runs[0].report is None and "no-such-recipe" in (results.runs[0].error or "")


def test_toml_and_yaml_configs_load_alike(tmp_path: Path) -> None:
    toml = tmp_path / "grid.toml"
    toml.write_text(
        'name = "g"\nseeds = [0, 1]\n[base]\nepochs = 2\n'
        '[[runs]]\nlabel = "r"\nrecipe = "study-fc"\noverrides = {lr = 0.01}\n'
    )
    yaml = tmp_path / "grid.yaml"
    yaml.write_text(
        "name: g\nseeds: [0, 1]\nbase: {epochs: 2}\n"
        "runs: [{label: r, recipe: study-fc, overrides: {lr: 0.01}}]\n"
    )
    assert load_experiment_config(toml) == load_experiment_config(yaml)
    from training.evaluation.experiments import resolve_recipe

    config = load_experiment_config(toml)
    recipe = resolve_recipe(config.runs[0], config.base)
    assert (recipe.model, recipe.epochs, recipe.lr) == ("fc", 2, 0.01)
