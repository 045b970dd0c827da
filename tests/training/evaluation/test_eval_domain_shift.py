"""The domain-shift sets and refit comparison (training.evaluation.domain_shift) on synthetic
data: the sets against the rules written out row by row, and a strong synthetic shift that a
refit on captures must recover (seconds)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from service.contracts import PairsSet
from service.errors import InvalidInput
from service.evaluation.protocol import evaluate_mapping
from service.vectors import flip_average
from training.evaluation.domain_shift import (
    format_table,
    is_capture_identity,
    refit_rows,
    shift_sets,
    top1_hits,
)
from training.evaluation.openset import is_enrolled
from training.evaluation.synthetic import synthetic_pairs
from training.transformers.data import normalized_pairs
from training.transformers.fit import fit_normalized
from training.transformers.recipes import get_recipe


def _kit_and_shifted(seed: int = 0, *, skip_every: int = 0) -> tuple[PairsSet, PairsSet]:
    """Synthetic kit (all splits) and a 'shifted' copy of the eval rows of identities with >= 2
    images: the new side through a fixed random distortion, the old side with noise."""
    kit = synthetic_pairs(n_identities=300, d_new=32, d_old=32, noise=0.2, seed=seed)
    rng = np.random.default_rng(seed + 1)
    assert kit.split is not None and kit.name is not None
    _, index, counts = np.unique(kit.name, return_inverse=True, return_counts=True)
    rows = np.flatnonzero((kit.split == "eval") & (counts[index] >= 2))
    if skip_every:
        rows = rows[np.arange(rows.size) % skip_every != 0]  # "no face found" in the shift
    distortion = np.eye(32) + 1.5 * rng.standard_normal((32, 32)) / np.sqrt(32)
    shifted = kit.take(rows)
    new = np.tanh(shifted.new @ distortion + 0.3)
    return kit, replace(
        shifted,
        new=new.astype(np.float32),
        new_flip=(new + 0.05 * rng.standard_normal(new.shape)).astype(np.float32),
        old=(shifted.old + 0.1 * rng.standard_normal(shifted.old.shape)).astype(np.float32),
        split=None,
    )


def _by_path(pairs: PairsSet) -> dict[str, int]:
    assert pairs.path is not None
    return {str(p): i for i, p in enumerate(pairs.path)}


@pytest.mark.parametrize("capture_templates", [True, False])
def test_sets_follow_the_rules_row_by_row(capture_templates: bool) -> None:
    kit, shifted = _kit_and_shifted(skip_every=5)
    kit_eval = kit.select_split("eval")
    sets = shift_sets(kit=kit_eval, shifted=shifted, capture_templates=capture_templates)
    kit_row, shifted_row = _by_path(kit_eval), _by_path(shifted)
    assert kit_eval.name is not None and kit_eval.path is not None
    for which, s in (("closed", sets.closed), ("open", sets.open)):
        expected: set[tuple[str, str]] = set()  # (path, "kit" | "shifted")
        for name in np.unique(kit_eval.name):
            paths = sorted(kit_eval.path[kit_eval.name == name].tolist())
            if len(paths) == 1:
                expected.add((paths[0], "kit"))
                continue
            if is_capture_identity(str(name)):
                if capture_templates:
                    expected.add((paths[0], "kit"))
                continue
            stranger = which == "open" and not is_enrolled(str(name))
            if not stranger:
                expected.add((paths[0], "kit"))
            searches = paths if stranger else paths[1:]
            expected |= {(p, "shifted") for p in searches if p in shifted_row}
        got = set()
        assert s.path is not None
        for i, p in enumerate(s.path):
            if np.array_equal(s.old[i], kit_eval.old[kit_row[p]]):
                got.add((p, "kit"))
                np.testing.assert_array_equal(s.new[i], kit_eval.new[kit_row[p]])
            else:
                np.testing.assert_array_equal(s.old[i], shifted.old[shifted_row[p]])
                np.testing.assert_array_equal(s.new_flip[i], shifted.new_flip[shifted_row[p]])
                got.add((p, "shifted"))
        assert got == expected and len(got) == len(s)
    caps = sets.captures
    assert caps.name is not None and caps.path is not None
    for i, p in enumerate(caps.path):
        name = str(caps.name[i])
        assert is_capture_identity(name)
        template = sorted(kit_eval.path[kit_eval.name == name].tolist())[0]
        assert p != template
        np.testing.assert_array_equal(caps.old[i], kit_eval.old[kit_row[template]])
        j = shifted_row[p]
        expected_new = flip_average(shifted.new[j : j + 1], shifted.new_flip[j : j + 1])[0]
        np.testing.assert_allclose(caps.new[i], expected_new, atol=1e-6)
        np.testing.assert_array_equal(sets.captures_own_old.old[i], kit_eval.old[kit_row[p]])
    np.testing.assert_array_equal(sets.captures_own_old.new, caps.new)
    np.testing.assert_array_equal(sets.original.path, sets.closed.path)
    np.testing.assert_array_equal(
        sets.original.old, kit_eval.old[[kit_row[p] for p in sets.original.path]]
    )


def test_capture_identities_are_never_test_probes() -> None:
    kit, shifted = _kit_and_shifted()
    sets = shift_sets(kit=kit.select_split("eval"), shifted=shifted)
    assert sets.closed.name is not None and sets.captures.name is not None
    names, counts = np.unique(sets.closed.name, return_counts=True)
    probed = set(names[counts >= 2].tolist())
    assert probed and probed.isdisjoint(set(sets.captures.name.tolist()))
    assert sets.counts()["captures"] == len(sets.captures) > 0


def test_refit_with_captures_recovers_a_strong_synthetic_shift() -> None:
    kit, shifted = _kit_and_shifted()
    sets = shift_sets(kit=kit.select_split("eval"), shifted=shifted)
    rows = refit_rows(
        sets=sets, kit_bridge=kit.select_split("bridge"), recipe=get_recipe("ridge"), repeats=(1, 3)
    )
    by_name = {r.name: r for r in rows}
    kit_only = by_name["mapped, kit bridge only"]
    refit = by_name["mapped, refit: kit bridge + captures x3"]
    assert refit.top1 > kit_only.top1 + 20.0  # the shift breaks the kit map; captures fix it
    assert refit.fnir_at_fpir_1e2 < kit_only.fnir_at_fpir_1e2
    assert refit.fit_rows == int((kit.split == "bridge").sum()) + 3 * len(sets.captures)
    assert by_name["old/old"].fit_rows is None
    assert "diagnostic: kit bridge + captures x1, own-photo targets" in by_name
    assert kit_only.vs_kit_only is None and refit.vs_kit_only is not None
    assert refit.vs_kit_only.only_a > refit.vs_kit_only.only_b
    table = format_table(rows)
    assert table.count("\n") == 2 + len(rows) and "| mapped, refit: captures only |" in table


def test_shifted_rows_must_be_kit_rows() -> None:
    kit, shifted = _kit_and_shifted()
    bad = replace(shifted, path=np.array([f"x/{p}" for p in shifted.path]))
    with pytest.raises(InvalidInput, match="shifted rows are not kit rows"):
        shift_sets(kit=kit.select_split("eval"), shifted=bad)


def test_top1_hits_agree_with_the_protocol_report() -> None:
    kit, shifted = _kit_and_shifted()
    sets = shift_sets(kit=kit.select_split("eval"), shifted=shifted)
    train = normalized_pairs(kit.select_split("bridge"))
    for recipe in ("ridge", "default"):  # forward, and two-way fused scoring
        fitted = fit_normalized(train=train, recipe=get_recipe(recipe), progress=False)
        mapped = fitted.map_rows(sets.closed)
        report = evaluate_mapping(eval_pairs=sets.closed, mapped=mapped)
        hits = top1_hits(sets.closed, mapped)
        assert hits.size == report.probes
        assert 100.0 * hits.mean() == pytest.approx(report.row("mapped").top1, abs=1e-9)
