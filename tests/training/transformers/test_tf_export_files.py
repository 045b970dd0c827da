"""Issue 11 (hardening): the exported ONNX file and its checksum get the permissions the umask
gives (not mkstemp's 0600), and ``fit`` stores a validation sample of real fit-row vectors
that the service validates uploads on."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from service.contracts import META_VALIDATION_SAMPLE, SPLIT_BRIDGE, PairsSet, save_pairs
from service.inference.transformer import TransformerRunner
from service.metadata_fields import decode_vectors
from training.transformers.cli import app
from training.transformers.export import default_metadata, export_transformer
from training.transformers.fit import fit_transformer


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_the_onnx_file_and_its_checksum_follow_the_umask(
    pairs: PairsSet, tmp_path: Path, umask: int
) -> None:
    fitted = fit_transformer(pairs=pairs, recipe="ridge", progress=False)
    previous = os.umask(umask)
    try:
        report = export_transformer(
            fitted,
            tmp_path / "t.onnx",
            metadata=default_metadata(fitted, source_model="a", target_model="b"),
        )
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert stat.S_IMODE(report.path.stat().st_mode) == expected
    assert stat.S_IMODE(report.sha256_path.stat().st_mode) == expected


def test_fit_stores_a_validation_sample_of_its_fit_rows(pairs: PairsSet, tmp_path: Path) -> None:
    pairs_file = save_pairs(tmp_path / "pairs.npz", pairs)
    out = tmp_path / "t.onnx"
    args = ["fit", "--pairs", str(pairs_file), "--output", str(out), "--recipe", "ridge"]
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    meta = TransformerRunner(out).metadata
    assert meta.validation_sample is not None
    sample = decode_vectors(meta.validation_sample, dim=pairs.new_dim, key=META_VALIDATION_SAMPLE)
    bridge = pairs.select_split(SPLIT_BRIDGE).new
    rows = np.linspace(0, len(bridge) - 1, num=len(sample)).astype(int)
    expected = bridge[rows] / np.linalg.norm(bridge[rows], axis=1, keepdims=True)
    assert len(sample) == min(32, len(bridge))
    np.testing.assert_allclose(sample, expected, atol=1e-6)
