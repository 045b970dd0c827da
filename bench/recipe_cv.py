"""Which recipe should be the default? Identity-fold cross-validation on the BRIDGE split.

For every recipe and every fold seed, the bridge identities are split into ``--folds`` groups;
each group in turn is held out, the recipe is fitted on the other groups and the held-out group
is evaluated with the project's protocol (PROTOCOL.md: templates, distractors, probes) against
old/old on the same rows. The table gives the mean difference mapped - old/old over all
folds and seeds (top-1 and TAR@FAR=1e-3, percentage points), so no eval row takes part in the
choice. The last columns are the usual figures on the eval split (fitted on all bridge rows),
for information.

With a pairs file that carries ``new_flip`` (``facebridge pairs add-flip``), every recipe is
scored with plain AND flip-averaged queries (what the service sends by default).

    .venv/bin/python bench/recipe_cv.py --pairs /tmp/kit_flip.npz \
        [--recipes default,ridge-scaled,mlp-scaled,two-way-mlp] [--folds 4] [--fold-seeds 0,1,2] \
        [--swapped]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from service.contracts import SPLIT_BRIDGE, SPLIT_EVAL, PairsSet, load_pairs
from service.evaluation.protocol import ROW_MAPPED, ROW_OLD_OLD, evaluate_mapping
from service.kit import find_kit_dir, kit_pairs_path
from training.transformers.fit import fit_transformer

DEFAULT_RECIPES = "default,ridge-scaled,mlp-scaled,two-way-mlp"


def identity_folds(label: np.ndarray, *, folds: int, seed: int) -> list[np.ndarray]:
    """Boolean held-out masks, one per fold: identities dealt round-robin after a shuffle."""
    identities = np.random.default_rng(seed).permutation(np.unique(label))
    return [np.isin(label, identities[k::folds]) for k in range(folds)]


def delta(report_rows: dict[str, tuple[float, float]]) -> tuple[float, float]:
    (m1, mt), (o1, ot) = report_rows[ROW_MAPPED], report_rows[ROW_OLD_OLD]
    return m1 - o1, mt - ot


def figures(report: object) -> dict[str, tuple[float, float]]:
    rows = {}
    for name in (ROW_MAPPED, ROW_OLD_OLD):
        row = report.row(name)  # type: ignore[attr-defined]
        rows[name] = (float(row.top1), float(row.tar_at_far_1e3))
    return rows


def _print_swapped(
    recipes: list[str], *, bridge: PairsSet, evaluation: PairsSet, query_kinds: list[bool]
) -> None:
    """The roles swapped: fitted on the eval people, tested on the bridge people."""
    print("\nroles swapped: fitted on the eval people, tested on the bridge people")
    print(
        "| recipe | queries | top-1 | TAR | old/old top-1 | old/old TAR "
        "| only mapped / only old/old right | McNemar p |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for recipe in recipes:
        fitted = fit_transformer(pairs=evaluation, recipe=recipe, progress=False)
        for flip in query_kinds:
            report = evaluate_mapping(eval_pairs=bridge, mapped=fitted.map_rows(bridge, flip=flip))
            rows = figures(report)
            (m1, mt), (o1, ot) = rows[ROW_MAPPED], rows[ROW_OLD_OLD]
            paired = report.paired
            assert paired is not None
            print(
                f"| {recipe} | {'flip-averaged' if flip else 'plain'} | {m1:.2f} | {mt:.2f} "
                f"| {o1:.2f} | {ot:.2f} | {paired.only_a} / {paired.only_b} "
                f"| {paired.p_value:.3f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=None, help="pairs file (default: the kit)")
    parser.add_argument("--recipes", default=DEFAULT_RECIPES)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--fold-seeds", default="0,1,2")
    parser.add_argument(
        "--swapped",
        action="store_true",
        help="also fit on the eval people and test on the bridge people (roles swapped)",
    )
    args = parser.parse_args()

    if args.pairs is None:
        kit = find_kit_dir()
        if kit is None:
            raise SystemExit("no pairs file: pass --pairs, or set FACEBRIDGE_KIT_DIR to the kit")
        args.pairs = kit_pairs_path(kit)
    pairs: PairsSet = load_pairs(args.pairs)
    bridge, evaluation = pairs.select_split(SPLIT_BRIDGE), pairs.select_split(SPLIT_EVAL)
    query_kinds = [False, True] if pairs.new_flip is not None else [False]
    seeds = [int(s) for s in args.fold_seeds.split(",")]
    label = np.asarray(bridge.label)
    print(
        f"pairs {args.pairs}: bridge {len(bridge)} rows / {len(np.unique(label))} identities, "
        f"eval {len(evaluation)} rows; {args.folds} folds x {len(seeds)} fold seeds; "
        f"queries: {'plain + flip-averaged' if len(query_kinds) == 2 else 'plain (no new_flip)'}"
    )
    print()
    print(
        "| recipe | queries | CV top-1 - old/old | CV TAR - old/old | eval top-1 | eval TAR "
        "| fit s |"
    )
    print("|---|---|---|---|---|---|---|")
    for recipe in args.recipes.split(","):
        deltas: dict[bool, list[tuple[float, float]]] = {flip: [] for flip in query_kinds}
        fit_seconds = []
        for seed in seeds:
            for held_out in identity_folds(label, folds=args.folds, seed=seed):
                fitted = fit_transformer(
                    pairs=bridge.take(np.flatnonzero(~held_out)), recipe=recipe, progress=False
                )
                fit_seconds.append(fitted.fit_seconds)
                held = bridge.take(np.flatnonzero(held_out))
                for flip in query_kinds:
                    report = evaluate_mapping(
                        eval_pairs=held, mapped=fitted.map_rows(held, flip=flip)
                    )
                    deltas[flip].append(delta(figures(report)))
        fitted = fit_transformer(pairs=bridge, recipe=recipe, progress=False)
        for flip in query_kinds:
            cv_top1, cv_tar = np.mean(deltas[flip], axis=0)
            report = evaluate_mapping(
                eval_pairs=evaluation, mapped=fitted.map_rows(evaluation, flip=flip)
            )
            top1, tar = figures(report)[ROW_MAPPED]
            print(
                f"| {recipe} | {'flip-averaged' if flip else 'plain'} | {cv_top1:+.2f} "
                f"| {cv_tar:+.2f} | {top1:.2f} | {tar:.2f} | {np.median(fit_seconds):.1f} |"
            )
    old = evaluate_mapping(eval_pairs=evaluation, mapped=None).row(ROW_OLD_OLD)
    print(f"\nold/old on eval: top-1 {old.top1:.2f}, TAR {old.tar_at_far_1e3:.2f}")
    if args.swapped:
        _print_swapped(
            args.recipes.split(","), bridge=bridge, evaluation=evaluation, query_kinds=query_kinds
        )


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
