"""On the real kit: the default recipe (two-way fused), fitted on bridge rows, exported and run
through the service's runner, beats closed-form ridge on the eval rows in top-1 and old/old in
TAR@FAR=1e-3 (both via the protocol)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.contracts import SPLIT_BRIDGE, SPLIT_EVAL, load_pairs
from service.evaluation.protocol import ROW_MAPPED, ROW_OLD_OLD, evaluate_mapping
from training.transformers.cli import evaluate_artefact
from training.transformers.data import normalized_pairs
from training.transformers.export import default_metadata, export_transformer
from training.transformers.fit import fit_transformer
from training.transformers.recipes import DEFAULT_RECIPE


@pytest.mark.kit
def test_default_recipe_beats_ridge_top1_and_old_old_tar_on_eval_split(
    kit_pairs_file: Path, tmp_path: Path
) -> None:
    pairs = load_pairs(kit_pairs_file)
    bridge, eval_pairs = pairs.select_split(SPLIT_BRIDGE), pairs.select_split(SPLIT_EVAL)

    fitted = fit_transformer(pairs=bridge, recipe=DEFAULT_RECIPE, progress=False)
    assert fitted.two_way
    meta = default_metadata(fitted, source_model="mobilefacenet-128", target_model="dlib-resnet-v1")
    out = export_transformer(fitted, tmp_path / "default.onnx", metadata=meta).path
    default_report = evaluate_artefact(
        pairs_path=kit_pairs_file, transformer_path=out, all_rows=False
    )
    assert default_report.scoring == "two-way fused, w=0.9"

    ridge = fit_transformer(pairs=bridge, recipe="ridge", progress=False)
    ridge_report = evaluate_mapping(
        eval_pairs=eval_pairs, mapped=ridge.transform(normalized_pairs(eval_pairs).new)
    )
    mapped, ridge_row = default_report.row(ROW_MAPPED), ridge_report.row(ROW_MAPPED)
    old_old = default_report.row(ROW_OLD_OLD)
    assert default_report.probes == ridge_report.probes > 1000
    assert mapped.top1 > ridge_row.top1, (mapped.top1, ridge_row.top1)
    assert mapped.tar_at_far_1e3 > old_old.tar_at_far_1e3, (
        mapped.tar_at_far_1e3,
        old_old.tar_at_far_1e3,
    )
