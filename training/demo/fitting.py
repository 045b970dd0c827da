"""The demo's training-side steps: numbered status lines, the thread limit, the split, the
transformer fit + export + evaluation, and the kit's new_flip (cached across rebuilds)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import typer

from service.contracts import KIT_NEW_MODEL_ID, KIT_OLD_MODEL_ID, PairsSet
from service.errors import InvalidInput
from training.demo.state import DEMO_SEED, TORCH_THREADS, FlipCache


class Steps:
    """Numbered status lines with timings (long steps show their own progress bars)."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.timings: dict[str, float] = {}
        self._n = 0

    @contextmanager
    def step(self, key: str, text: str) -> Iterator[None]:
        self._n += 1
        self.say(f"[{self._n}] {text} ...")
        started = time.perf_counter()
        yield
        self.timings[key] = round(time.perf_counter() - started, 2)
        self.say(f"    done in {self.timings[key]:.1f} s")

    def say(self, text: str) -> None:
        if not self.quiet:
            typer.echo(text)


def limit_threads() -> None:
    """Keep torch/OpenMP to an explicit thread count (:data:`TORCH_THREADS`)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(TORCH_THREADS))
    import torch

    torch.set_num_threads(TORCH_THREADS)


def assign_split(pairs: PairsSet, splits: dict[str, str]) -> PairsSet:
    if pairs.name is None:
        raise InvalidInput("pairs file has no 'name' column; cannot assign the demo split")
    split = np.array([splits[str(n)] for n in pairs.name])
    return dataclasses.replace(pairs, split=split)


def fit_recipe(
    *,
    pairs_path: Path,
    output: Path,
    recipe: str,
    source_model: str = KIT_NEW_MODEL_ID,
    target_model: str = KIT_OLD_MODEL_ID,
    progress: bool = False,
) -> Path:
    """``facebridge transformer fit`` as the demo runs it: fit ``recipe`` on the bridge rows,
    threshold at FAR=1e-3 on them, export, validate (and the eval-split metrics inside)."""
    from training.transformers.cli import fit_command

    fit_command(
        pairs=[pairs_path],
        output=output,
        recipe=recipe,
        seed=DEMO_SEED,
        source_model=source_model,
        target_model=target_model,
        progress=progress,
    )
    return output


def fit_and_export(
    *,
    pairs_path: Path,
    output: Path,
    recipe: str,
    source_model: str,
    target_model: str,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``facebridge transformer fit`` (fit on the bridge rows, threshold, export, validate),
    then the protocol's evaluation of the exported ONNX on the eval rows (docs/PROTOCOL.md)."""
    from service.inference.transformer import TransformerRunner
    from training.transformers.cli import evaluate_artefact

    fit_recipe(
        pairs_path=pairs_path,
        output=output,
        recipe=recipe,
        source_model=source_model,
        target_model=target_model,
        progress=progress,
    )
    report = evaluate_artefact(pairs_path=pairs_path, transformer_path=output, all_rows=False)
    runner = TransformerRunner(output)
    meta = runner.metadata
    info = {
        "path": str(output),
        "recipe": meta.recipe,
        "sha256": runner.sha256,
        "source_model": meta.source_model,
        "target_model": meta.target_model,
        "threshold": meta.threshold,
        "fit_seconds": meta.metrics.get("fit_seconds"),
        # "flip-averaged" when the pairs carry new_flip (how the service queries by default)
        "queries": getattr(report, "queries", None),
    }
    return info, _report_metrics(report)


def _report_metrics(report: Any) -> dict[str, Any]:
    """top-1 of every protocol row (``{"old/old top1": 93.93, ...}``), for printing."""
    return {
        f"{name} top1": round(float(row.top1), 2)
        for name, row in report.rows.items()
        if row.top1 is not None
    }


def cached_new_flip(
    *,
    pairs: PairsSet,
    images_dir: Path,
    backbone_manifest: Path,
    cache_dir: Path,
    progress: bool,
) -> tuple[np.ndarray, int]:
    """new_flip for every row of ``pairs`` (``facebridge pairs add-flip``'s computation) and how
    many rows were embedded now: rows already in the cache are reused, the others computed and
    added to it."""
    from service.inference.backbone import OnnxBackbone
    from training.data.flip import mirrored_embeddings

    if pairs.path is None:
        raise InvalidInput("the demo needs a 'path' column in the pairs file")
    cache = FlipCache.for_backbone(
        cache_dir=cache_dir, images_dir=images_dir, backbone_manifest=backbone_manifest
    )
    known = cache.read()
    paths = pairs.path.astype(str)
    missing = np.array([i for i, p in enumerate(paths.tolist()) if p not in known], np.int64)
    if missing.size:
        backbone = OnnxBackbone(backbone_manifest, intra_op_threads=TORCH_THREADS)
        computed, _ = mirrored_embeddings(
            pairs=pairs.take(missing), images_dir=images_dir, backbone=backbone, progress=progress
        )
        known.update(zip(paths[missing].tolist(), computed, strict=True))
        cache.write(known)
    return np.stack([known[p] for p in paths.tolist()]), int(missing.size)
