"""A synthetic pairs set for experiments and tests when the sample kit is absent.

Identities are clusters in a latent space seen through two different random maps (the "old"
and the "new" model). Image counts per identity vary (some identities have one image, so the
protocol has distractors), and ``split`` separates bridge from eval identities.
It is NOT face data: reports made on it say so in their header.
"""

from __future__ import annotations

import numpy as np

from service.contracts import SPLIT_BRIDGE, SPLIT_EVAL, PairsSet

SYNTHETIC_SOURCE = "SYNTHETIC data ({reason}): figures are not face-recognition results"


def synthetic_pairs(
    *,
    n_identities: int = 120,
    max_images: int = 6,
    d_latent: int = 16,
    d_new: int = 32,
    d_old: int = 32,
    noise: float = 0.6,
    eval_fraction: float = 0.4,
    seed: int = 0,
) -> PairsSet:
    """A pairs set with 1..``max_images`` images per identity and a bridge/eval split."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_images + 1, size=n_identities)
    label = np.repeat(np.arange(n_identities), counts)
    centres = rng.standard_normal((n_identities, d_latent))
    z = centres[label] + noise * rng.standard_normal((label.size, d_latent))
    new = np.tanh(z @ rng.standard_normal((d_latent, d_new)) / np.sqrt(d_latent))
    old = z @ rng.standard_normal((d_latent, d_old)) + 0.5  # unnormalised, common offset
    is_eval = rng.random(n_identities) < eval_fraction
    split = np.where(is_eval[label], SPLIT_EVAL, SPLIT_BRIDGE)
    # Image numbers run backwards so the path order differs from the row order.
    image_no = np.concatenate([np.arange(c)[::-1] for c in counts])
    path = np.array(
        [f"id{lab:04d}/id{lab:04d}_{i:04d}.jpg" for lab, i in zip(label, image_no, strict=True)]
    )
    name = np.array([f"id{lab:04d}" for lab in label])
    return PairsSet(
        old=old.astype(np.float32),
        new=new.astype(np.float32),
        label=label.astype(np.int64),
        name=name,
        path=path,
        split=split,
    )
