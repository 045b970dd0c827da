"""Realised FPIR of the service's default match rule at several gallery sizes, on the kit.

The rule (service.decision): threshold = the score at FAR* = 1 - (1 - FACEBRIDGE_TARGET_FPIR)^(1/N)
of the transformer's stored calibration, N = gallery faces. This bench builds galleries of
about 500, 1,431 and 5,000 identities from the kit's EVAL split only (never a bridge person),
searches every image of the strangers (docs/PROTOCOL.md's open-set split: sha1("openset" +
name) odd) exactly as the service scores them (ONNX transformer, flip-averaged queries when the
pairs carry new_flip, two-way fused scores), and counts the searches whose best score clears
the threshold. Both halves take both roles: "split" (enrolled = even hash, strangers = odd) and
"swapped" (the reverse); "pooled" adds the two counts.

How the galleries grow (one face per identity):
- ~500: the enrolled templates (first image by path) + singletons (eval people with one image),
  seeded sample;
- 1,225 ("all real"): the enrolled templates + every singleton: all the distinct eval people
  who are not strangers; the largest gallery of real distinct people the kit allows;
- 1,431 and 5,000: the 1,225 real identities + SYNTHETIC distractor identities. The kit holds
  no other people outside the bridge split, and extra photos (or mirrored / rotated copies) of
  the same 1,225 people are not independent chances for a stranger (measured: they barely move
  the count), so they cannot stand in for new people. A synthetic identity is an old-space
  vector v' = mu + C Q C^-1 (v - mu): a real non-stranger vector v, its deviation from the mean
  whitened (C = Cholesky factor of the non-stranger vectors' covariance), turned by a random
  rotation Q and coloured back: the population's mean and covariance, a real vector's whitened
  radius, no one's identity. Its realism is checked in the same run ("1,225 synthetic"
  replaces the 1,017 singletons by as many synthetic identities: compare with "all real").

    .venv/bin/python bench/openset.py --pairs PAIRS_WITH_FLIP [--transformer FILE.onnx]

Without --transformer, the default recipe is fitted on the bridge rows with `facebridge
transformer fit` (cross-fitted calibration) into a temporary directory. Target (issue 9): the
realised FPIR within [0.5x, 2x] of the 1% target at every size.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SIZES = (500, 1431, 5000)
VALIDATION = "singletons synthetic"  # the realism check of the synthetic identities


def _log_pmf(i: int, n: int, p: float) -> float:
    return (
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
        + i * math.log(p) + (n - i) * math.log1p(-p)
    )  # fmt: skip


def _cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    return min(1.0, sum(math.exp(_log_pmf(i, n, p)) for i in range(k + 1)))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval (bisection on the binomial CDF; no SciPy)."""

    def solve(f: Any) -> float:  # f decreasing in p: the p where f(p) = 0
        lo, hi = 1e-12, 1.0 - 1e-12
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
        return (lo + hi) / 2

    alpha = (1.0 - level) / 2
    low = 0.0 if k == 0 else solve(lambda p: (1.0 - _cdf(k - 1, n, p)) * -1 + alpha)
    high = 1.0 if k == n else solve(lambda p: _cdf(k, n, p) - alpha)
    return low, high


def synthetic_identities(real: np.ndarray, *, count: int, seed: int) -> np.ndarray:
    """``count`` synthetic old-space vectors from the unit vectors ``real`` (module docstring).

    ``Q w`` for a uniformly random rotation ``Q`` is ``|w|`` times a uniformly random unit
    vector, so no rotation matrix is built."""
    rng = np.random.default_rng(seed)
    mean = real.mean(axis=0)
    chol = np.linalg.cholesky(np.cov(real.T) + 1e-9 * np.eye(real.shape[1]))
    white = np.linalg.solve(chol, (real - mean).T).T
    radius = np.linalg.norm(white[rng.integers(white.shape[0], size=count)], axis=1)
    direction = rng.standard_normal((count, real.shape[1]))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return (mean + (direction * radius[:, None]) @ chol.T).astype(np.float32)


def _transformer(args: argparse.Namespace, workdir: Path) -> Path:
    if args.transformer is not None:
        return Path(args.transformer)
    from training.transformers.cli import fit_command

    out = workdir / "default.onnx"
    fit_command(pairs=[Path(args.pairs)], output=out, progress=False)
    return out


@dataclass
class Row:
    split: str
    gallery: str
    faces: str
    false_matches: float  # mean over the gallery draws
    searches: int
    threshold: float | None
    draws: list[int]  # false matches of each draw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", help="pairs file (default: the kit's; plain queries)")
    parser.add_argument("--transformer", help="exported ONNX (default: fit the default recipe)")
    parser.add_argument("--target-fpir", type=float, default=0.01)
    parser.add_argument("--draws", type=int, default=10, help="synthetic galleries per size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from service.contracts import load_pairs
    from service.evaluation.protocol import runner_rows
    from service.inference.transformer import TransformerRunner
    from service.kit import find_kit_dir

    if args.pairs is None:
        kit = find_kit_dir()
        if kit is None:
            print("sample kit absent: give --pairs", file=sys.stderr)
            return 1
        args.pairs = str(kit / "lfw" / "pairs.npz")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runner = TransformerRunner(_transformer(args, Path(tmp)), intra_op_threads=2)
    evaluation = load_pairs(args.pairs).select_split("eval")
    mapped = runner_rows(evaluation, runner=runner)
    calibration = runner.metadata.calibration_for(queries=mapped.query_kind)
    if calibration is None:
        print("the transformer carries no open-set calibration", file=sys.stderr)
        return 1
    rows = _measure(evaluation, mapped, runner, calibration, args)
    _print(rows, args, calibration, time.perf_counter() - started)
    ok = all(
        0.5 * args.target_fpir <= row.false_matches / row.searches <= 2.0 * args.target_fpir
        for row in rows
        if row.split == "pooled" and VALIDATION not in row.gallery
    )
    return 0 if ok else 1


def _galleries(
    evaluation: Any, templates: np.ndarray, pool: np.ndarray, args: argparse.Namespace
) -> dict[str, list[np.ndarray]]:
    """Gallery name -> its draws (unit old vectors), as the module docstring describes."""
    from service.vectors import l2_normalize

    _, index, counts = np.unique(evaluation.label, return_inverse=True, return_counts=True)
    singles = np.flatnonzero(counts[index] == 1)
    real = l2_normalize(evaluation.old[np.concatenate([templates, singles])])
    rng = np.random.default_rng(args.seed)
    sample = rng.choice(singles, SIZES[0] - templates.size, replace=False)
    out = {
        f"~{SIZES[0]} (real)": [l2_normalize(evaluation.old[np.r_[templates, sample]])],
        "all real (~1,225)": [real],
    }

    def synthetic(count: int, draw: int) -> np.ndarray:
        return l2_normalize(synthetic_identities(pool, count=count, seed=args.seed + 7919 * draw))

    draws = range(1, args.draws + 1)
    out[f"all real, {VALIDATION}"] = [
        np.vstack([real[: templates.size], synthetic(singles.size, d)]) for d in draws
    ]
    for size in SIZES[1:]:
        out[f"{size:,} (real + synthetic)"] = [
            np.vstack([real, synthetic(size - real.shape[0], d)]) for d in draws
        ]
    return out


def _measure(
    evaluation: Any, mapped: Any, runner: Any, calibration: Any, args: argparse.Namespace
) -> list[Row]:
    from service.decision import open_set_threshold
    from service.vectors import l2_normalize
    from training.evaluation.openset import is_enrolled

    labels = np.asarray(evaluation.label)
    _, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    multi = counts[index] >= 2
    even = np.array([is_enrolled(n) for n in np.asarray(evaluation.name).astype(str)])
    rows: list[Row] = []
    for split, enrolled in (("split", multi & even), ("swapped", multi & ~even)):
        strangers = np.flatnonzero(multi & ~enrolled)
        members = np.flatnonzero(enrolled)
        order = members[np.lexsort((evaluation.path[members], labels[members]))]
        templates = order[np.r_[True, labels[order][1:] != labels[order][:-1]]]
        pool = l2_normalize(evaluation.old[np.flatnonzero(~(multi & ~enrolled))])
        for name, draws in _galleries(evaluation, templates, pool, args).items():
            n = draws[0].shape[0]
            t = open_set_threshold(
                calibration=calibration, target_fpir=args.target_fpir, gallery_faces=n
            )
            found = []
            for old in draws:
                probes, gallery = _scoring(mapped, runner, strangers, old)
                found.append(int(np.sum(np.max(probes @ gallery.T, axis=1) >= t)))
            rows.append(Row(split, name, str(n), float(np.mean(found)), strangers.size, t, found))
    for name in dict.fromkeys(r.gallery for r in rows):
        parts = [r for r in rows if r.gallery == name]
        rows.append(
            Row(
                "pooled",
                name,
                "/".join(r.faces for r in parts),
                sum(r.false_matches for r in parts),
                sum(r.searches for r in parts),
                None,
                [sum(d) for d in zip(*(r.draws for r in parts), strict=True)],
            )
        )
    return rows


def _scoring(mapped: Any, runner: Any, strangers: np.ndarray, old: np.ndarray) -> tuple:  # type: ignore[type-arg]
    """(stranger query vectors, gallery vectors) in the service's comparison space, the
    gallery's backward map run by the transformer as the service runs it."""
    from dataclasses import replace

    from service.evaluation.protocol import mapped_vectors

    with_gallery = replace(mapped, backward=runner.map_gallery(old)) if runner.two_way else mapped
    return mapped_vectors(
        with_gallery, query_rows=strangers, gallery_rows=np.arange(old.shape[0]), old_gallery=old
    )


def _print(rows: list[Row], args: argparse.Namespace, calibration: Any, seconds: float) -> None:
    print(
        f"open-set bench: target FPIR {args.target_fpir:g}; calibration: {calibration.source} "
        f"({calibration.n_impostor} impostors, {calibration.queries} queries); synthetic "
        f"galleries: {args.draws} draws each; {seconds:.0f} s"
    )
    print("| split | gallery | N faces | threshold | false matches / searches | realised FPIR "
          "(95% CI) | x target | draws: min-max |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        low, high = clopper_pearson(round(row.false_matches), row.searches)
        realised = row.false_matches / row.searches
        thr = "-" if row.threshold is None else f"{row.threshold:.4f}"
        spread = "-" if len(row.draws) == 1 else f"{min(row.draws)}-{max(row.draws)}"
        print(
            f"| {row.split} | {row.gallery} | {row.faces} | {thr} | {row.false_matches:g} / "
            f"{row.searches} | {100 * realised:.2f}% ({100 * low:.2f}-{100 * high:.2f}) | "
            f"{realised / args.target_fpir:.2f} | {spread} |"
        )


if __name__ == "__main__":
    sys.exit(main())
