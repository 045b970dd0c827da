"""The protocol's split rules, rows and report on synthetic sets; the kit's reference figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.contracts import PairsSet, load_pairs
from service.errors import InvalidInput
from service.evaluation.protocol import (
    PROTOCOL_CLOSED_SET,
    ROW_MAPPED,
    ROW_NAMES,
    ROW_OLD_OLD,
    ROW_RAW_CROSS,
    build_gallery_and_probes,
    closed_set_report,
    evaluate_mapping,
)
from training.evaluation.synthetic import synthetic_pairs


def naive_split(pairs: PairsSet) -> tuple[set[int], set[int], set[int]]:
    templates, distractors, probes = set(), set(), set()
    by_label: dict[int, list[int]] = {}
    for row, label in enumerate(pairs.label.tolist()):
        by_label.setdefault(label, []).append(row)
    for rows in by_label.values():
        first = min(rows, key=lambda r: str(pairs.path[r]))
        if len(rows) == 1:
            distractors.add(first)
        else:
            templates.add(first)
            probes.update(r for r in rows if r != first)
    return templates, distractors, probes


def naive_top1(probe_vecs, gallery_vecs, probe_labels, gallery_labels) -> float:
    hits = 0
    for i in range(len(probe_vecs)):
        best, best_score = -1, -np.inf
        for j in range(len(gallery_vecs)):
            score = float(np.dot(probe_vecs[i], gallery_vecs[j]))
            if score > best_score:
                best, best_score = j, score
        hits += int(gallery_labels[best] == probe_labels[i])
    return 100.0 * hits / len(probe_vecs)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_split_rules_match_naive(seed: int) -> None:
    pairs = synthetic_pairs(n_identities=50, seed=seed)
    split = build_gallery_and_probes(pairs)
    templates, distractors, probes = naive_split(pairs)
    assert set(split.template_rows.tolist()) == templates
    assert set(split.distractor_rows.tolist()) == distractors
    assert set(split.probe_rows.tolist()) == probes
    assert len(templates) + len(distractors) + len(probes) == len(pairs)
    # The synthetic paths run backwards: the template is NOT the first row of its identity.
    first_rows = {int(np.flatnonzero(pairs.label == lab)[0]) for lab in np.unique(pairs.label)}
    assert templates - first_rows


def test_evaluate_mapping_rows_match_naive_search() -> None:
    pairs = synthetic_pairs(n_identities=40, d_new=24, d_old=24, seed=2)
    rng = np.random.default_rng(0)
    mapped = pairs.old + 0.8 * rng.standard_normal(pairs.old.shape).astype(np.float32)
    report = evaluate_mapping(eval_pairs=pairs, mapped=mapped)
    split = build_gallery_and_probes(pairs)
    g, p = split.gallery_rows, split.probe_rows
    labels = pairs.label
    expected = {
        "old/old": (pairs.old[p], pairs.old[g]),
        "new/new": (pairs.new[p], pairs.new[g]),
        "raw cross": (pairs.new[p], pairs.old[g]),
        "mapped": (mapped[p], pairs.old[g]),
    }
    assert tuple(report.rows) == ROW_NAMES
    for name, (probe_vecs, gallery_vecs) in expected.items():
        want = naive_top1(unit(probe_vecs), unit(gallery_vecs), labels[p], labels[g])
        assert report.row(name).top1 == pytest.approx(want), name
        assert report.row(name).top5 >= report.row(name).top1
    old_top1 = report.row(ROW_OLD_OLD).top1
    assert report.compatible == (report.row(ROW_MAPPED).top1 > old_top1)
    assert report.templates == split.template_rows.size
    assert report.probes == split.probe_rows.size


def test_mapping_equal_to_old_vectors_reproduces_old_old_and_scale_does_not_matter() -> None:
    pairs = synthetic_pairs(n_identities=30, d_new=8, d_old=16, seed=3)
    report = evaluate_mapping(eval_pairs=pairs, mapped=3.0 * pairs.old)
    old_row, mapped_row = report.row(ROW_OLD_OLD), report.row(ROW_MAPPED)
    assert (mapped_row.top1, mapped_row.top5, mapped_row.tar_at_far_1e3) == pytest.approx(
        (old_row.top1, old_row.top5, old_row.tar_at_far_1e3)
    )
    assert report.compatible is False
    # Different dims: the raw cross row is n/a, and says why.
    raw = report.row(ROW_RAW_CROSS)
    assert raw.top1 is None and "dims differ" in raw.note
    assert "| raw cross | new model, unmapped | old model | n/a | n/a | n/a |" in (
        report.to_markdown()
    )


def test_gallery_smaller_than_k_filters_empty_slots() -> None:
    # 2 identities x 2 images: gallery of 2 < k=5, FAISS fills the rest with -1.
    old = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    pairs = PairsSet(
        old=old,
        new=old.copy(),
        label=np.array([0, 0, 1, 1]),
        path=np.array(["a/1", "a/2", "b/1", "b/2"]),
    )
    report = evaluate_mapping(eval_pairs=pairs, mapped=None)
    assert report.row(ROW_OLD_OLD).top1 == 100.0
    assert report.row(ROW_OLD_OLD).top5 == 100.0
    assert report.row(ROW_MAPPED).top1 is None and report.compatible is None


def test_report_serialises_and_rejects_bad_input() -> None:
    pairs = synthetic_pairs(n_identities=20, seed=4)
    report = evaluate_mapping(eval_pairs=pairs, mapped=pairs.old)
    data = json.loads(report.to_json())
    assert set(data["rows"]) == set(ROW_NAMES)
    assert data["gallery"]["templates"] == report.templates
    with pytest.raises(InvalidInput, match="mapped vectors"):
        evaluate_mapping(eval_pairs=pairs, mapped=pairs.old[:-1])
    singletons = PairsSet(old=pairs.old[:3], new=pairs.new[:3], label=np.arange(3))
    with pytest.raises(InvalidInput, match="no identity with >= 2 images"):
        evaluate_mapping(eval_pairs=singletons, mapped=None)
    closed = closed_set_report(fit_pairs=pairs, mapped=pairs.old)
    assert closed.protocol == PROTOCOL_CLOSED_SET
    assert "CLOSED-SET" in closed.to_markdown()


def kit_ridge(bridge: PairsSet, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """The kit README's closed-form ridge: unit new -> RAW old (dlib, norm ~1.4), centred, with
    a bias, penalty on W only. ``ridge_map`` is that estimator; fed the raw old vectors and
    lambda 0.1 it gives the README's figures (normalised old targets give 92.34 / 97.76 / 94.52)."""
    from training.transformers.closed_form import ridge_map

    return ridge_map(unit(bridge.new.astype(np.float64)), bridge.old, lam=lam)


@pytest.mark.kit
def test_kit_reference_figures(kit_pairs_file: Path) -> None:
    pairs = load_pairs(kit_pairs_file)
    bridge, evaluation = pairs.select_split("bridge"), pairs.select_split("eval")
    weight, bias = kit_ridge(bridge, lam=0.1)
    mapped = unit(evaluation.new.astype(np.float64)) @ weight + bias
    report = evaluate_mapping(eval_pairs=evaluation, mapped=mapped)
    assert (report.templates, report.distractors, report.probes) == (414, 1017, 1697)
    measured = {
        name: tuple(round(v, 2) for v in (row.top1, row.top5, row.tar_at_far_1e3))
        for name, row in report.rows.items()
    }
    assert measured == {  # kit/README.md, "Reference figures"
        "old/old": (93.93, 98.76, 94.58),
        "new/new": (96.58, 98.29, 97.41),
        "raw cross": (0.00, 0.06, 0.24),
        "mapped": (92.10, 97.70, 94.93),
    }
    assert report.compatible is False


def test_importing_evaluation_starts_nothing_heavy() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import training.evaluation.cli, training.evaluation.experiments\n"
        "import service.evaluation.protocol, training.evaluation.report\n"
        "heavy = sorted({'torch', 'faiss', 'matplotlib'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
