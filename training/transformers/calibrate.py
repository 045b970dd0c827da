"""The open-set calibration stored in an exported transformer: cross-fitted by identity.

The service scores queries of people the transformer never saw, and a map scores the rows it
was fitted on a little differently: on the kit's bridge rows the in-sample impostor tail sits
~0.003 higher than the out-of-sample one, which made the realised FPIR on unseen strangers about
half the target (docs/service.md). So the calibration is cross-fitted: the fit rows' identities
are split into ``folds`` groups (seeded); for each group the recipe is fitted on the others and
the group's rows, mapped by that model (queries it never saw), are scored against one template
of every fit identity (:func:`training.evaluation.calibration.impostor_scores`): all 5.4 million
comparisons of the kit's bridge rows, each query out of sample. (The gallery side's backward map
is in-sample for the other groups' templates; its weight is 0.1.) The exported transformer is
still fitted on all rows. ``folds < 2``: in-sample (the final map; cheaper, conservative).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.contracts import PairsSet
from service.decision import (
    SCORE_FORWARD,
    SCORE_FUSED,
    SCORE_NATIVE,
    ScoreCalibration,
    fit_calibration,
)
from service.errors import InvalidInput
from service.evaluation.protocol import build_gallery_and_probes
from service.vectors import flip_average, l2_normalize
from training.evaluation.calibration import calibrate, impostor_scores
from training.transformers.fit import FittedTransformer, fit_transformer

DEFAULT_FOLDS = 5


def identity_folds(label: np.ndarray, *, folds: int, seed: int) -> np.ndarray:
    """Fold index per row; every identity in exactly one fold (seeded, balanced by count)."""
    identities = np.unique(label)
    order = np.random.default_rng(seed).permutation(identities.size)
    fold_of = np.empty(identities.size, dtype=np.int64)
    fold_of[order] = np.arange(identities.size) % folds
    return fold_of[np.searchsorted(identities, label)]


def fit_calibrations(
    fitted: FittedTransformer,
    fit_pairs: PairsSet,
    *,
    space: str,
    flip: bool,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    device: str = "cpu",
) -> list[ScoreCalibration]:
    """The calibrations of ``fitted``'s score: for the queries the service sends (flip-averaged
    when the pairs carry ``new_flip`` and ``flip`` is on) and, with ``new_flip``, for plain
    queries too. Cross-fitted with ``folds`` folds (module docstring), or in-sample."""
    kinds = [flip] + ([False] if flip and fit_pairs.new_flip is not None else [])
    if folds < 2:
        rows = [fitted.map_rows(fit_pairs, flip=f) for f in kinds]
        return [calibrate(fit_pairs, mapped, space=space) for mapped in rows]
    fold = identity_folds(np.asarray(fit_pairs.label), folds=folds, seed=seed)
    if np.unique(fold).size < folds:
        raise InvalidInput(f"{folds}-fold calibration needs at least {folds} identities")
    scores: dict[bool, list[np.ndarray]] = {f: [] for f in kinds}
    queries: dict[bool, Any] = {}
    for k in range(folds):
        model = fit_transformer(
            pairs=fit_pairs.take(np.flatnonzero(fold != k)),
            recipe=fitted.recipe,
            device=device,
            seed=seed,
            progress=False,
        )
        held = np.flatnonzero(fold == k)
        for f in kinds:
            mapped = model.map_rows(fit_pairs, flip=f)
            scores[f].append(impostor_scores(fit_pairs, mapped, query_rows=held)[0])
            queries[f] = mapped.query_kind
    return [
        fit_calibration(
            np.concatenate(scores[f]),
            score_kind=SCORE_FORWARD if fitted.fusion_weight == 1.0 else SCORE_FUSED,
            space=space,
            queries=queries[f],
            fusion_weight=fitted.fusion_weight,
            n_queries=len(fit_pairs),
            n_gallery=int(np.unique(fit_pairs.label).size),
            source=f"fit rows, {folds}-fold cross-fitted by identity (recipe {fitted.recipe.name})",
        )
        for f in kinds
    ]


def native_calibrations(pairs: PairsSet, *, space: str, flip: bool) -> list[ScoreCalibration]:
    """The calibration of native new/new scores (``space``: the backbone's model id): every
    row's new vector (flip-averaged when the pairs carry ``new_flip`` and ``flip`` is on, as
    the service sends them) against one new-model template of every other identity. No map is
    fitted, so nothing is cross-fitted. The service fuses native and mapped evidence per
    identity through these tails (service.migration.fusion)."""
    split = build_gallery_and_probes(pairs)
    templates = np.sort(split.gallery_rows)
    queries = pairs.new
    kind = "plain"
    if flip and pairs.new_flip is not None:
        queries, kind = flip_average(pairs.new, pairs.new_flip), "flip-averaged"
    queries = l2_normalize(np.asarray(queries, np.float32))
    gallery = l2_normalize(np.asarray(pairs.new[templates], np.float32))
    labels = np.asarray(pairs.label)
    parts = []
    for start in range(0, len(queries), 1024):
        rows = np.arange(start, min(start + 1024, len(queries)))
        scores = queries[rows] @ gallery.T
        parts.append(scores[labels[rows][:, None] != labels[templates][None, :]])
    return [
        fit_calibration(
            np.concatenate(parts),
            score_kind=SCORE_NATIVE,
            space=space,
            queries=kind,
            n_queries=len(queries),
            n_gallery=int(templates.size),
            source=f"fit rows, native new/new: {len(queries)} queries x {templates.size} ids",
        )
    ]
