"""The face check on aligned crops: kit ``aligned/`` crops accepted, non-faces refused.

Positives: every kit ``aligned/`` crop (6,939; ``--limit`` for fewer). Negatives: the generated
non-face set of :mod:`training.evaluation.nonfaces` (flat colours, noise, gradients, rendered
text: ``--per-category`` each) plus ``--backgrounds`` face-free regions of kit photos (regions
that overlap the subject's face box from ``landmarks5``, or any face dlib finds in the photo
with upsampling 1, are skipped). Prints one table: rates per category with counts.

    .venv/bin/python bench/facecheck.py [--limit N] [--per-category 250] [--backgrounds 500]

Targets (issue 9): aligned crops accepted >= 99.5%; non-faces refused >= 99%.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np


def _photos(kit, rows: dict[str, np.ndarray], order: np.ndarray) -> Iterator[tuple]:  # type: ignore[no-untyped-def]
    from service.inference.detect import make_detector
    from service.inference.images import read_image_file
    from training.evaluation.nonfaces import subject_box

    detector = make_detector("dlib", upsample=1)
    assert detector is not None
    for i in order:
        photo = read_image_file(kit / "lfw" / "photos" / rows["path"][i])
        boxes: list[Sequence[float]] = [subject_box(rows["landmarks5"][i])]
        boxes += [face.box for face in detector.detect(photo)]
        yield photo, boxes, str(rows["path"][i])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only N kit crops (seeded)")
    parser.add_argument("--per-category", type=int, default=250)
    parser.add_argument("--backgrounds", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--upscale", type=float, default=None, help="the check's upscale")
    args = parser.parse_args(argv)

    from service.inference.facecheck import DEFAULT_UPSCALE, DlibCropCheck
    from service.inference.images import read_image_file
    from service.kit import find_kit_dir
    from training.evaluation.nonfaces import background_crops, generated_nonfaces

    check = DlibCropCheck(upscale=DEFAULT_UPSCALE if args.upscale is None else args.upscale)
    kit = find_kit_dir()
    table: list[tuple[str, str, int, int]] = []  # (set, what counts, hits, n)
    started = time.perf_counter()
    negatives = generated_nonfaces(per_category=args.per_category, seed=args.seed)
    if kit is None:
        print("SAMPLE KIT ABSENT: generated non-faces only (no positives, no backgrounds)")
    else:
        with np.load(kit / "lfw" / "pairs.npz") as z:
            rows = {k: z[k] for k in ("path", "landmarks5", "detected")}
        rng = np.random.default_rng(args.seed)
        order = rng.permutation(len(rows["path"]))
        chosen = order if args.limit is None else order[: args.limit]
        refused = []
        for i in chosen:
            crop = read_image_file(kit / "lfw" / "aligned" / rows["path"][i])
            if not check.check(crop).accepted:
                refused.append(i)
        table.append(("kit aligned/ crops", "accepted", len(chosen) - len(refused), len(chosen)))
        fallback = int((~rows["detected"][refused]).sum()) if refused else 0
        print(
            f"kit crops refused: {len(refused)} ({fallback} of them from the kit's centre-box "
            f"fallback, detected=False): " + ", ".join(str(rows["path"][i]) for i in refused[:10])
        )
        negatives += background_crops(
            _photos(kit, rows, rng.permutation(len(rows["path"]))),
            count=args.backgrounds,
            seed=args.seed,
        )
    by_category: dict[str, list[bool]] = {}
    for item in negatives:
        by_category.setdefault(item.category, []).append(not check.check(item.image).accepted)
    for category, refused in by_category.items():
        table.append((f"non-faces: {category}", "refused", int(sum(refused)), len(refused)))
    every = [r for refused in by_category.values() for r in refused]
    table.append(("non-faces: all", "refused", int(sum(every)), len(every)))
    seconds = time.perf_counter() - started
    print(
        f"face check: {check.name} (min_score {check.min_score}, {check.size} px + "
        f"{check.pad} px border); {seconds:.0f} s"
    )
    print("| set | rate | count |\n|---|---|---|")
    for name, what, hits, n in table:
        print(f"| {name} | {100.0 * hits / max(n, 1):.2f}% {what} | {hits} / {n} |")
    ok = all(
        hits / max(n, 1) >= (0.995 if what == "accepted" else 0.99)
        for name, what, hits, n in table
        if name in ("kit aligned/ crops", "non-faces: all")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
