"""Does image-level augmentation of the BRIDGE set lift the transformer above old/old?

Builds "bridge + flip" pairs from the kit: every bridge photo horizontally flipped and embedded
by both models with the project's own extraction (``training.data.extract.extract_pairs``, i.e.
``facebridge pairs extract --aligned --photos ... --augment flip``): the new model (the kit's
MobileFaceNet) on the flipped ``aligned/`` crop, the old model (dlib) on the flipped photo with
the mirrored detection box. Eval identities are never extracted (the extraction only sees a
folder of symlinks to the bridge identities). The flipped rows join the kit's original bridge
rows with the kit's labels; the re-extracted unflipped rows are only used to check that the
extraction reproduces the kit's vectors (cosine ~1).

Then fits each recipe on bridge only and on bridge + flip, and evaluates on the eval rows
(PROTOCOL.md) with plain queries and with flip-averaged queries
(``service.vectors.flip_average`` of the crop's and the mirrored crop's embeddings, as the service
computes by default; the mirrored embeddings come from the product's ``pairs add-flip`` code).
Prints one markdown table. Everything goes under ``--output`` (never into the kit).

    .venv/bin/python bench/augmented_bridge.py --output /tmp/augmented [--shards 2] \
        [--augment flip|shift|flip,shift] [--recipes default,ridge-scaled] [--seeds 0,1,2]

Each augmentation is one extraction per shard (dlib ~70 ms/face/core, twice per photo: the
original and the augmented one; ~12 min wall on 2 busy cores), resumable: rerun the same
command. ``shift`` is the extraction's other augmentation (the face moved by ~3% of the crop,
the same way on both sides); with several, ``bridge+a+b`` is fitted too.
"""

from __future__ import annotations

import argparse
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
from parallel_extract import extract_roots

from service.contracts import SPLIT_BRIDGE, SPLIT_EVAL, PairsSet, load_pairs, save_pairs
from service.inference.backbone import OnnxBackbone
from service.kit import find_kit_dir, kit_backbone_manifest, kit_pairs_path
from service.vectors import flip_average, l2_normalize

EVAL_FLIP_FILE = "eval_new_flip.npy"
BRIDGE_FLIP_FILE = "bridge_new_flip.npy"


def shard_folders(*, kit: Path, pairs: PairsSet, work: Path, shards: int) -> list[Path]:
    """``work/shard<k>/{aligned,photos}/<identity>`` symlinks, bridge identities only."""
    assert pairs.name is not None and pairs.split is not None
    bridge_names = sorted(set(pairs.name[pairs.split == SPLIT_BRIDGE].tolist()))
    eval_names = set(pairs.name[pairs.split == SPLIT_EVAL].tolist())
    if eval_names & set(bridge_names):
        raise SystemExit("kit split is not disjoint by identity")
    roots = []
    for k in range(shards):
        root = work / f"shard{k}"
        for kind in ("aligned", "photos"):
            (root / kind).mkdir(parents=True, exist_ok=True)
            for name in bridge_names[k::shards]:
                link = root / kind / name
                if not link.exists():
                    link.symlink_to(kit / "lfw" / kind / name)
        roots.append(root)
    return roots


def extract_shards(*, roots: list[Path], kit: Path, work: Path, augment: str) -> list[Path]:
    """One ``facebridge pairs extract --augment AUGMENT`` process per shard (nice'd, 1 thread
    each), in parallel; an existing output is reused."""
    manifest = str(kit_backbone_manifest(kit))

    def args(root: Path) -> list[str]:
        return [
            "--images", str(root / "aligned"), "--photos", str(root / "photos"), "--aligned",
            "--old", "dlib", "--new", manifest, "--augment", augment, "--chunk-size", "256",
        ]  # fmt: skip

    return extract_roots(roots, work=work, prefix=f"{augment}_", args=args)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (l2_normalize(a) * l2_normalize(b)).sum(axis=1)


def augmented_rows(
    *, kit_pairs: PairsSet, extracted: list[Path], augment: str
) -> tuple[PairsSet, dict[str, float]]:
    """The extracted ``augment`` rows with the kit's labels/names, and a check that the
    re-extracted unaugmented rows reproduce the kit's vectors."""
    assert kit_pairs.path is not None and kit_pairs.name is not None
    assert kit_pairs.split is not None
    row_of = {p: i for i, p in enumerate(kit_pairs.path.tolist())}
    parts = [load_pairs(p, mmap=False) for p in extracted]
    old = np.concatenate([p.old for p in parts])
    new = np.concatenate([p.new for p in parts])
    kinds = np.concatenate([p.extra["augment"] for p in parts])
    kit_rows = np.array([row_of[str(x)] for p in parts for x in p.path])  # type: ignore[union-attr]
    if (kit_pairs.split[kit_rows] != SPLIT_BRIDGE).any():
        raise SystemExit("an extracted row belongs to the eval split")
    plain, aug = kinds == "none", kinds == augment
    check = {
        "images": int(plain.sum()),
        f"{augment}_rows": int(aug.sum()),
        "min_cos_old_vs_kit": float(cosine(old[plain], kit_pairs.old[kit_rows[plain]]).min()),
        "min_cos_new_vs_kit": float(cosine(new[plain], kit_pairs.new[kit_rows[plain]]).min()),
        f"mean_cos_old_{augment}_vs_orig": float(
            cosine(old[aug], kit_pairs.old[kit_rows[aug]]).mean()
        ),
        f"mean_cos_new_{augment}_vs_orig": float(
            cosine(new[aug], kit_pairs.new[kit_rows[aug]]).mean()
        ),
    }
    rows = kit_rows[aug]
    return PairsSet(
        old=old[aug],
        new=new[aug],
        label=kit_pairs.label[rows],
        name=kit_pairs.name[rows],
        path=kit_pairs.path[rows],
        split=np.full(rows.size, SPLIT_BRIDGE),
        extra={"augment": np.full(rows.size, augment)},
    ), check


def concat_pairs(parts: list[PairsSet]) -> PairsSet:
    """Rows of ``parts`` one after another (all carry name, path, split and ``augment``)."""
    return PairsSet(
        old=np.concatenate([p.old for p in parts]),
        new=np.concatenate([p.new for p in parts]),
        label=np.concatenate([p.label for p in parts]),
        name=np.concatenate([np.asarray(p.name) for p in parts]),
        path=np.concatenate([np.asarray(p.path) for p in parts]),
        split=np.concatenate([np.asarray(p.split) for p in parts]),
        extra={"augment": np.concatenate([p.extra["augment"] for p in parts])},
    )


def kit_new_flip(*, kit: Path, pairs: PairsSet) -> np.ndarray:
    """``new_flip`` of ``pairs``' rows from the kit's ``aligned/`` crops: the product's
    ``facebridge pairs add-flip`` computation (:func:`training.data.flip.mirrored_embeddings`)."""
    from training.data.flip import mirrored_embeddings

    backbone = OnnxBackbone(kit_backbone_manifest(kit), intra_op_threads=1)
    new_flip, _ = mirrored_embeddings(
        pairs=pairs, images_dir=kit / "lfw" / "aligned", backbone=backbone
    )
    return new_flip


def print_table(
    *,
    eval_pairs: PairsSet,
    train_sets: dict[str, PairsSet],
    queries: dict[str, np.ndarray],
    recipes: list[str],
    seeds: list[int],
) -> None:
    """Fit every recipe on every training set, evaluate every query variant: a markdown table.

    ``queries`` are new-model vectors for every eval row (normalised)."""
    from service.evaluation.protocol import evaluate_mapping
    from training.transformers.fit import fit_transformer

    base = evaluate_mapping(eval_pairs=eval_pairs, mapped=None)
    old = base.row("old/old")
    print(f"\nold/old: top-1 {old.top1:.2f}, top-5 {old.top5:.2f}, TAR {old.tar_at_far_1e3:.2f}")
    print(f"seeds {seeds} (mean; min-max of top-1 in brackets when more than one)\n")
    print(
        "| recipe | fitted on | rows | queries | top-1 | top-5 | TAR@FAR=1e-3 "
        "| > old/old (top-1 and TAR) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for recipe in recipes:
        for set_name, train in train_sets.items():
            metrics: dict[str, list[tuple[float, float, float]]] = {q: [] for q in queries}
            for seed in seeds:
                fitted = fit_transformer(pairs=train, recipe=recipe, seed=seed, progress=False)
                for q_name, q in queries.items():
                    row = evaluate_mapping(eval_pairs=eval_pairs, mapped=fitted.transform(q)).row(
                        "mapped"
                    )
                    metrics[q_name].append((row.top1, row.top5, row.tar_at_far_1e3))
                if fitted.recipe.closed_form:
                    break  # deterministic: one seed says it all
            for q_name, values in metrics.items():
                arr = np.array(values)
                top1, top5, tar = arr.mean(axis=0)
                spread = f" [{arr[:, 0].min():.2f}-{arr[:, 0].max():.2f}]" if len(arr) > 1 else ""
                wins = int(((arr[:, 0] > old.top1) & (arr[:, 2] > old.tar_at_far_1e3)).sum())
                clears = f"{wins}/{len(arr)} fits"
                print(
                    f"| {recipe} | {set_name} | {len(train)} | {q_name} | {top1:.2f}{spread} "
                    f"| {top5:.2f} | {tar:.2f} | {clears} |",
                    flush=True,
                )


def identity_fold(names: np.ndarray, *, folds: int) -> np.ndarray:
    """A stable fold per identity (hash of the name): a person is in one fold only."""
    return np.array([zlib.crc32(str(n).encode()) % folds for n in names])


def print_bridge_cv(
    *,
    bridge: PairsSet,
    bridge_flip_new: np.ndarray,
    train_sets: dict[str, PairsSet],
    recipes: list[str],
    folds: int = 4,
    probes_per_identity: int = 5,
    seed: int = 0,
) -> None:
    """The same comparison without the eval rows: k-fold CV over BRIDGE identities.

    Each fold fits on the other folds' rows of a training set (their augmented rows included,
    the held-out identities' never) and evaluates the protocol on the held-out identities'
    original rows, at most ``probes_per_identity`` probes each (one person with hundreds of
    images would otherwise decide the score); top-1 pooled over probes, TAR averaged."""
    from service.evaluation.protocol import evaluate_mapping
    from training.transformers.fit import fit_transformer

    assert bridge.name is not None and bridge.path is not None
    held_fold = identity_fold(bridge.name, folds=folds)
    keep = np.zeros(len(bridge), dtype=bool)
    seen: dict[str, int] = {}
    for row in np.lexsort((bridge.path, bridge.name)):
        name = str(bridge.name[row])
        seen[name] = seen.get(name, 0) + 1
        keep[row] = seen[name] <= probes_per_identity + 1  # + the enrolment template
    print(f"\n{folds}-fold CV over bridge identities (seed {seed}); top-1 / TAR@FAR=1e-3\n")
    print("| recipe | fitted on | plain | flip-averaged | old/old |")
    print("|---|---|---|---|---|")
    for recipe in recipes:
        for set_name, train in train_sets.items():
            assert train.name is not None
            train_fold = identity_fold(train.name, folds=folds)
            hits = {"plain": 0.0, "flip": 0.0, "old": 0.0}
            tars = {"plain": 0.0, "flip": 0.0, "old": 0.0}
            probes = 0
            for fold in range(folds):
                fitted = fit_transformer(
                    pairs=train.take(np.flatnonzero(train_fold != fold)),
                    recipe=recipe,
                    seed=seed,
                    progress=False,
                )
                rows = np.flatnonzero((held_fold == fold) & keep)
                held = bridge.take(rows)
                variants = {
                    "plain": l2_normalize(held.new),
                    "flip": flip_average(held.new, bridge_flip_new[rows]),
                }
                for key, queries in variants.items():
                    report = evaluate_mapping(eval_pairs=held, mapped=fitted.transform(queries))
                    hits[key] += report.row("mapped").top1 * report.probes / 100
                    tars[key] += report.row("mapped").tar_at_far_1e3 / folds
                hits["old"] += report.row("old/old").top1 * report.probes / 100
                tars["old"] += report.row("old/old").tar_at_far_1e3 / folds
                probes += report.probes
            cells = [f"{100 * hits[k] / probes:.2f} / {tars[k]:.2f}" for k in hits]
            print(f"| {recipe} | {set_name} | {' | '.join(cells)} |", flush=True)
    print(f"({probes} held-out probes pooled)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="work dir (not the kit)")
    parser.add_argument("--shards", type=int, default=2, help="parallel extraction processes")
    parser.add_argument(
        "--augment", default="flip", help="comma list of flip, shift: one extraction each"
    )
    parser.add_argument("--recipes", default="default,ridge-scaled")
    parser.add_argument("--seeds", default="0", help="comma list; learned recipes are averaged")
    parser.add_argument(
        "--bridge-cv", action="store_true", help="also 4-fold CV over bridge identities"
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    kit = find_kit_dir()
    if kit is None:
        raise SystemExit("sample kit absent (set FACEBRIDGE_KIT_DIR): nothing to measure")
    work = args.output.resolve()
    if kit.resolve() in (work, *work.parents):
        raise SystemExit("--output must not be inside the kit")
    work.mkdir(parents=True, exist_ok=True)
    kit_pairs = load_pairs(kit_pairs_path(kit), mmap=False)
    augments = [a.strip() for a in args.augment.split(",") if a.strip()]

    started = time.perf_counter()
    roots = shard_folders(kit=kit, pairs=kit_pairs, work=work, shards=args.shards)
    bridge = kit_pairs.select_split(SPLIT_BRIDGE)
    bridge = replace(bridge, extra={"augment": np.full(len(bridge), "none")})
    augmented: dict[str, PairsSet] = {}
    for augment in augments:
        extracted = extract_shards(roots=roots, kit=kit, work=work, augment=augment)
        augmented[augment], check = augmented_rows(
            kit_pairs=kit_pairs, extracted=extracted, augment=augment
        )
        print(f"{augment}: {check}")
    print(f"extraction + join: {time.perf_counter() - started:.0f} s")
    train_sets = {"bridge only": bridge}
    for combo in [[a] for a in augments] + ([augments] if len(augments) > 1 else []):
        label = "bridge+" + "+".join(combo)
        train_sets[label] = concat_pairs([bridge, *(augmented[a] for a in combo)])
        out = work / f"{label.replace('+', '_plus_')}.npz"
        save_pairs(out, train_sets[label])
        print(f"wrote {out}: {len(train_sets[label])} rows")

    eval_pairs = kit_pairs.select_split(SPLIT_EVAL)
    flip_file = work / EVAL_FLIP_FILE
    if not flip_file.exists():
        np.save(flip_file, kit_new_flip(kit=kit, pairs=eval_pairs))
    queries = {
        "plain": l2_normalize(eval_pairs.new),
        "flip-averaged": flip_average(eval_pairs.new, np.load(flip_file)),
    }
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    print_table(
        eval_pairs=eval_pairs, train_sets=train_sets, queries=queries, recipes=recipes, seeds=seeds
    )
    if args.bridge_cv:
        bridge_flip_file = work / BRIDGE_FLIP_FILE
        if not bridge_flip_file.exists():
            np.save(bridge_flip_file, kit_new_flip(kit=kit, pairs=bridge))
        print_bridge_cv(
            bridge=bridge,
            bridge_flip_new=np.load(bridge_flip_file),
            train_sets=train_sets,
            recipes=recipes,
            seed=seeds[0],
        )


if __name__ == "__main__":
    main()
