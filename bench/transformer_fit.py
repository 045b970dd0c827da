"""Time fitting transformers on the whole kit (all 6,939 pairs) on this 2-core CPU.

Prints one table: fit seconds, ratio vs ridge (measured in the same run), and top-1 on the eval
split for reference (fitted on bridge rows only, via the protocol). Not part of the test run.

    .venv/bin/python bench/transformer_fit.py [--recipes default,ridge,procrustes,study-fc]

Recipes: the two-way default and the previous default ``mlp-scaled`` are both in the default list.
"""

from __future__ import annotations

import argparse
import time

from service.contracts import SPLIT_BRIDGE, SPLIT_EVAL, load_pairs
from service.kit import find_kit_dir, kit_pairs_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipes", default="ridge,procrustes,ridge-scaled,study-fc,mlp-scaled,default"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from service.evaluation.protocol import evaluate_mapping
    from training.transformers.data import normalized_pairs
    from training.transformers.fit import fit_normalized
    from training.transformers.recipes import get_recipe

    torch.set_num_threads(args.threads)
    kit = find_kit_dir()
    if kit is None:
        raise SystemExit("sample kit absent (set FACEBRIDGE_KIT_DIR): nothing to benchmark")
    pairs = load_pairs(kit_pairs_path(kit))
    whole = normalized_pairs(pairs)
    bridge, eval_pairs = pairs.select_split(SPLIT_BRIDGE), pairs.select_split(SPLIT_EVAL)
    bridge_train = normalized_pairs(bridge)

    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    if "ridge" not in names:
        names.insert(0, "ridge")
    rows = []
    for name in names:
        recipe = get_recipe(name)
        started = time.perf_counter()
        fit_normalized(train=whole, recipe=recipe, progress=False, threads=args.threads)
        seconds = time.perf_counter() - started
        fitted = fit_normalized(
            train=bridge_train, recipe=recipe, progress=False, threads=args.threads
        )
        # scored as the service scores it: fused when two-way (plain queries: the kit file)
        report = evaluate_mapping(eval_pairs=eval_pairs, mapped=fitted.map_rows(eval_pairs))
        rows.append((name, recipe.model, seconds, report.row("mapped").top1))
    ridge_seconds = next(s for n, _, s, _ in rows if n == "ridge")
    print(
        f"fit on all {len(whole)} kit pairs, {args.threads} threads; top-1: bridge fit, eval split"
    )
    print("| recipe | model | fit s (all pairs) | x ridge | eval top-1 |")
    print("|---|---|---|---|---|")
    for name, model, seconds, top1 in rows:
        ratio = seconds / max(ridge_seconds, 1e-9)
        print(f"| {name} | {model} | {seconds:.2f} | {ratio:.1f}x | {top1:.2f} |")


if __name__ == "__main__":
    main()
