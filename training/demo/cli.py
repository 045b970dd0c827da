"""``facebridge demo build|run`` (registered through the ``facebridge.commands`` entry point)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import typer

from training.demo.build import build_demo
from training.demo.state import (
    DEFAULT_DATA_DIR,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEMO_RECIPE,
    SYNTHETIC_BANNER,
    DemoState,
)

app = typer.Typer(
    help="Build and serve a ready-to-query demo (kit faces if present, else synthetic data).",
    no_args_is_help=True,
)


DataDirOption = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="where the demo data lives")
SyntheticOption = typer.Option(
    False, "--synthetic", help="use synthetic data even if the kit exists"
)
ForceOption = typer.Option(False, "--force", help="rebuild even when the demo data is up to date")
RecipeOption = typer.Option(
    DEMO_RECIPE, "--recipe", help="transformer recipe (see docs/training.md)"
)


def curl_commands(state: DemoState, *, host: str, port: int) -> list[str]:
    base = f"http://{host}:{port}"
    return [
        f"curl -s -H 'X-API-Key: {state.api_key}' -F 'image=@{e.image}' {base}/v1/identify"
        " | python3 -m json.tool"
        for e in state.examples
        if e.verified
    ]


def print_summary(
    state: DemoState,
    *,
    host: str,
    port: int,
    serving: bool = True,
    echo: Callable[[str], None] = typer.echo,
) -> None:
    banner = (
        f"  *** {SYNTHETIC_BANNER} (generated patterns, random backbones) ***"
        if state.synthetic
        else ""
    )
    echo("")
    echo("=" * 72)
    echo(f"facebridge demo ({state.source})" + (banner and "\n" + banner))
    echo(f"  data:        {state.data_dir}")
    g = state.gallery
    echo(
        f"  gallery:     {g.get('imported')} old-model vectors ({g.get('templates')} enrolment "
        f"templates + {g.get('distractors')} distractors); {g.get('probes')} eval probes"
    )
    info = state.transformer
    echo(
        f"  transformer: recipe {info.get('recipe')!r}, "
        f"{info.get('source_model')} -> {info.get('target_model')}"
    )
    queries = info.get("queries")
    echo(
        "  eval split:  "
        + (f"({queries} queries) " if queries else "")
        + ", ".join(f"{k}={v}" for k, v in state.evaluation.items())
    )
    echo(f"  API key (identify scope, demo only): {state.api_key}")
    echo(f"  console:     http://{host}:{port}/console")
    echo(f"               sign in with the admin key (demo only): {state.console_key}")
    echo(f"  docs:        http://{host}:{port}/docs (offline)")
    echo("")
    if serving:
        echo("Try it in another terminal once the server below says 'Application startup complete'")
        echo("(each image is a probe of a person in the gallery, not the enrolled image):")
    else:
        echo("Start the service with `facebridge demo run` (or `make demo`), then try")
        echo("(each image is a probe of a person in the gallery, not the enrolled image):")
    for example, command in zip(
        (e for e in state.examples if e.verified),
        curl_commands(state, host=host, port=port),
        strict=True,
    ):
        notes = ["a full photo: the service detects and aligns the face"] * (
            example.kind == "photo"
        )
        notes.append(
            "top candidate, above the decision threshold, so also `match`"
            if example.matched
            else "top candidate; below the decision threshold, so `match` is null"
        )
        echo(f"  # expected: {example.expected} ({'; '.join(notes)})")
        echo(f"  {command}")
    echo("=" * 72)


@app.command("build")
def build_command(
    data_dir: Path = DataDirOption,
    synthetic: bool = SyntheticOption,
    force: bool = ForceOption,
    recipe: str = RecipeOption,
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
) -> None:
    """Prepare the demo data (idempotent) and verify it; does not start the service."""
    state = build_demo(
        data_dir=data_dir,
        synthetic=synthetic,
        force=force,
        recipe=recipe,
        progress=not no_progress,
    )
    print_summary(state, host=DEFAULT_HOST, port=DEFAULT_PORT, serving=False)


@app.command("run")
def run_command(
    host: str = typer.Option(DEFAULT_HOST, "--host"),
    port: int = typer.Option(DEFAULT_PORT, "--port"),
    data_dir: Path = DataDirOption,
    synthetic: bool = SyntheticOption,
    force: bool = ForceOption,
    recipe: str = RecipeOption,
    no_serve: bool = typer.Option(False, "--no-serve", help="build and verify only"),
) -> None:
    """Build the demo data if needed, print curl commands, then serve until Ctrl-C."""
    state = build_demo(data_dir=data_dir, synthetic=synthetic, force=force, recipe=recipe)
    print_summary(state, host=host, port=port, serving=not no_serve)
    if no_serve:
        return
    serve(state, host=host, port=port)


def serve(state: DemoState, *, host: str, port: int) -> None:
    """`facebridge service run` (uvicorn + the app factory, as in the Docker image) with the
    demo's FACEBRIDGE_* settings in the environment."""
    from service.commands import serve_run

    os.environ.update(state.env)
    typer.echo(f"starting the service at http://{host}:{port} (Ctrl-C stops it) ...")
    serve_run(host=host, port=port, workers=1)
