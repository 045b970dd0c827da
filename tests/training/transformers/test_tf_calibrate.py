"""The cross-fitted open-set calibration written by ``facebridge transformer fit``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from service.vectors import l2_normalize
from training.evaluation.calibration import calibrate
from training.transformers.calibrate import fit_calibrations, identity_folds
from training.transformers.fit import fit_transformer
from training.transformers.recipes import get_recipe


def test_identity_folds_put_each_identity_in_one_balanced_fold() -> None:
    label = np.repeat(np.arange(23), np.arange(1, 24))
    fold = identity_folds(label, folds=5, seed=3)
    for identity in range(23):
        assert np.unique(fold[label == identity]).size == 1
    per_fold = [np.unique(label[fold == k]).size for k in range(5)]
    assert max(per_fold) - min(per_fold) <= 1
    assert np.array_equal(fold, identity_folds(label, folds=5, seed=3))  # seeded


def test_cross_fitted_calibration_scores_queries_the_fold_model_never_saw(make_pairs) -> None:  # type: ignore[no-untyped-def]
    pairs = make_pairs(n_ids=60, per_id=4, seed=2)
    rng = np.random.default_rng(0)
    pairs = replace(
        pairs, new_flip=l2_normalize(pairs.new + 0.05 * rng.standard_normal(pairs.new.shape))
    )
    fitted = fit_transformer(pairs=pairs, recipe=get_recipe("ridge"), progress=False)
    flip, plain = fit_calibrations(fitted, pairs, space="old-m", flip=True, folds=4)
    assert (flip.queries, plain.queries) == ("flip-averaged", "plain")
    assert flip.n_impostor == len(pairs) * 59  # every row against every other identity
    in_sample = calibrate(pairs, fitted.map_rows(pairs, flip=True), space="old-m")
    assert in_sample.n_impostor == flip.n_impostor
    # different maps score the queries: the tables differ
    assert flip.score_at_far(1e-2) != in_sample.score_at_far(1e-2)
    (again,) = fit_calibrations(fitted, pairs, space="old-m", flip=False, folds=0)
    assert again.queries == "plain" and "cross-fitted" not in again.source
