"""Domain shift: does refitting with captured pairs close the gap to old/old there?

Turns a subset of the kit's photos (every image of the ``eval`` identities with >= 2 photos:
2,111 of 6,939) grayscale, blurred and darkened, writes them under ``--work`` (never into the
kit), embeds them by BOTH models with the repo's own ``facebridge pairs extract`` (photos: dlib
detection on the degraded photo, dlib descriptor on it, ArcFace alignment + MobileFaceNet,
``new_flip``; photos where dlib finds no face are skipped), then compares, with the repo's
protocol code (training.evaluation.domain_shift, whose docstring has the rules):

- the eval identities are split by a fixed hash into a *capture* half and a *test* half;
- test half (PROTOCOL.md): the gallery (templates + the eval singletons as distractors) holds
  the ORIGINAL photos' old vectors (enrolled before the shift); probes are shifted photos;
- captures = each shifted photo of the capture half but its template: (its flip-averaged native
  new vector, the identity's template old vector from the original photo), what the service
  records;
- rows: old/old (shifted old probes), new/new (templates re-enrolled with the new model),
  mapped by a transformer fitted on the kit bridge only, refit on kit bridge + captures (each
  ``--repeats`` value = ``--pairs-repeat``), and on the captures only; per recipe.

    .venv/bin/python bench/domain_shift.py --work /tmp/domain-shift \
        [--blur 2.0 --brightness 0.45] [--recipes ridge,default] [--repeats 1,4] [--shards 2]

Extraction is resumable (rerun the same command); ~70 ms of dlib per face per core. It also
writes ``captures.npz`` and ``test_closed.npz`` under ``--work``, so the same comparison runs
through the CLI: ``facebridge transformer fit --pairs KIT --pairs WORK/captures.npz ...`` then
``facebridge transformer evaluate --pairs WORK/test_closed.npz --all-rows ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from parallel_extract import extract_roots
from PIL import Image, ImageEnhance, ImageFilter

from service.contracts import SPLIT_BRIDGE, SPLIT_EVAL, PairsSet, load_pairs, save_pairs
from service.evaluation.protocol import build_gallery_and_probes
from service.kit import find_kit_dir, kit_backbone_manifest, kit_pairs_path
from service.vectors import l2_normalize
from training.evaluation.domain_shift import format_table, refit_rows, shift_sets
from training.evaluation.openset import open_set_split
from training.transformers.multi_pairs import combine_pairs
from training.transformers.recipes import get_recipe

BLUR_RADIUS = 2.0  # Gaussian blur, pixels of the 250x250 photo ("strong"; 1.0 = "moderate")
BRIGHTNESS = 0.45  # darkening factor, PIL ImageEnhance.Brightness ("strong"; 0.6 = "moderate")
JPEG_QUALITY = 90
SETTINGS_FILE = "degrade.json"


def degrade(image: Image.Image, *, blur: float, brightness: float) -> Image.Image:
    """Grayscale (3 equal channels), Gaussian blur, darkened: a cheap, poor camera."""
    gray = image.convert("L").filter(ImageFilter.GaussianBlur(blur))
    return ImageEnhance.Brightness(gray).enhance(brightness).convert("RGB")


def check_settings(work: Path, settings: dict[str, float]) -> None:
    """A work dir holds one degradation: refuse to mix settings (use another --work)."""
    path = work / SETTINGS_FILE
    if path.exists() and json.loads(path.read_text()) != settings:
        raise SystemExit(f"{work} was made with {path.read_text()}; use another --work")
    path.write_text(json.dumps(settings, sort_keys=True))


def shifted_paths(pairs: PairsSet) -> list[str]:
    """Relative paths to degrade: every image of the eval identities with >= 2 images."""
    assert pairs.name is not None and pairs.path is not None and pairs.split is not None
    paths: list[str] = []
    eval_rows = np.flatnonzero(pairs.split == "eval")
    by_name: dict[str, list[str]] = {}
    for i in eval_rows:
        by_name.setdefault(str(pairs.name[i]), []).append(str(pairs.path[i]))
    for name in sorted(by_name):
        if len(by_name[name]) >= 2:
            paths += sorted(by_name[name])
    return paths


def write_degraded(
    *, photos: Path, paths: list[str], shard_roots: list[Path], settings: dict[str, float]
) -> None:
    """Degraded JPEGs under ``shard_roots[k]/<identity>/<file>`` (identities dealt round robin)."""
    names = sorted({p.split("/")[0] for p in paths})
    shard_of = {name: k % len(shard_roots) for k, name in enumerate(names)}
    for rel in paths:
        out = shard_roots[shard_of[rel.split("/")[0]]] / rel
        if out.exists():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(photos / rel) as image:
            degrade(image.convert("RGB"), **settings).save(out, quality=JPEG_QUALITY)


def extract_shards(*, kit: Path, shard_roots: list[Path], work: Path) -> list[Path]:
    """One ``facebridge pairs extract`` per shard, in parallel (photos: dlib detection)."""
    manifest = str(kit_backbone_manifest(kit))

    def args(root: Path) -> list[str]:
        return [
            "--images", str(root), "--old", "dlib", "--new", manifest,
            "--chunk-size", "128", "--no-progress",
        ]  # fmt: skip

    return extract_roots(shard_roots, work=work, prefix="", args=args)


def prepare(
    *, work: Path, shards: int, settings: dict[str, float]
) -> tuple[PairsSet, list[PairsSet]]:
    """Kit pairs + the shifted pairs files (degraded and extracted if not done yet)."""
    kit = find_kit_dir()
    if kit is None:
        raise SystemExit("no kit (FACEBRIDGE_KIT_DIR or ../shared/kit): nothing to shift")
    kit_pairs = load_pairs(kit_pairs_path(kit), mmap=False)
    check_settings(work, settings)
    roots = [work / f"shard{k}" for k in range(shards)]
    paths = shifted_paths(kit_pairs)
    write_degraded(photos=kit / "lfw" / "photos", paths=paths, shard_roots=roots, settings=settings)
    outputs = extract_shards(kit=kit, shard_roots=roots, work=work)
    return kit_pairs, [load_pairs(p, mmap=False) for p in outputs]


def shift_check(kit_eval: PairsSet, shifted: PairsSet) -> str:
    """How far the shift moved each model: mean cosine shifted vs original, same photo."""
    assert kit_eval.path is not None and shifted.path is not None
    row = {str(p): i for i, p in enumerate(kit_eval.path)}
    rows = np.array([row[str(p)] for p in shifted.path])

    def mean_cos(a: np.ndarray, b: np.ndarray) -> float:
        return float((l2_normalize(a) * l2_normalize(b)).sum(axis=1).mean())

    old = mean_cos(shifted.old, kit_eval.old[rows])
    new = mean_cos(shifted.new, kit_eval.new[rows])
    return f"mean cosine shifted vs original photo: old model {old:.3f}, new model {new:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch dir (not the kit)")
    parser.add_argument("--shards", type=int, default=2, help="parallel extraction processes")
    parser.add_argument("--recipes", default="ridge,default", help="comma list of recipes")
    parser.add_argument("--repeats", default="1,4", help="--pairs-repeat values for captures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blur", type=float, default=BLUR_RADIUS, help="Gaussian blur radius")
    parser.add_argument("--brightness", type=float, default=BRIGHTNESS, help="darkening factor")
    parser.add_argument("--extract-only", action="store_true")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    settings = {"blur": args.blur, "brightness": args.brightness}
    kit_pairs, parts = prepare(work=args.work, shards=args.shards, settings=settings)
    shifted = combine_pairs(parts, sources=[f"shard{k}" for k in range(len(parts))]).pairs
    kit_eval = kit_pairs.select_split(SPLIT_EVAL)
    print(f"shifted rows: {len(shifted)} of {len(shifted_paths(kit_pairs))} degraded photos "
          f"(the rest: no face found); {shift_check(kit_eval, shifted)}")  # fmt: skip
    if args.extract_only:
        return
    sets = shift_sets(kit=kit_eval, shifted=shifted)
    print("sets:", ", ".join(f"{k}={v}" for k, v in sets.counts().items()))
    closed, open_set = build_gallery_and_probes(sets.closed), open_set_split(sets.open)
    print("closed set:", closed.counts(), "| open set:", open_set.counts())
    for name, part in (("captures", sets.captures), ("test_closed", sets.closed)):
        save_pairs(args.work / f"{name}.npz", part)  # for the CLI: fit --pairs, evaluate
    repeats = tuple(int(r) for r in args.repeats.split(","))
    bridge = kit_pairs.select_split(SPLIT_BRIDGE)
    for recipe in args.recipes.split(","):
        rows = refit_rows(
            sets=sets, kit_bridge=bridge, recipe=get_recipe(recipe), repeats=repeats, seed=args.seed
        )
        print(f"\nrecipe {recipe!r} (flip-averaged queries where the rows have new_flip)\n")
        print(format_table(rows))
    # Diagnostic: the same fits with the capture half's templates out of the test galleries.
    without = shift_sets(kit=kit_eval, shifted=shifted, capture_templates=False)
    rows = refit_rows(
        sets=without, kit_bridge=bridge, recipe=get_recipe(recipe), repeats=(1,), diagnostics=False
    )
    print(f"\nrecipe {recipe!r}, capture-half templates NOT in the test galleries\n")
    print(format_table(rows))
    print(f"{time.perf_counter() - started:.0f} s wall; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
