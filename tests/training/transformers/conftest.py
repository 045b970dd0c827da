"""Small synthetic pairs sets for the transformer tests (seconds, no kit needed)."""

from __future__ import annotations

import numpy as np
import pytest

from service.contracts import PairsSet


def synthetic_pairs(
    *, n_ids: int = 40, per_id: int = 5, d_new: int = 12, d_old: int = 16, seed: int = 0
) -> PairsSet:
    """Identities as clusters in a latent space, seen through two different random maps."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n_ids, 8))
    label = np.repeat(np.arange(n_ids), per_id)
    z = latent[label] + 0.3 * rng.standard_normal((label.size, 8))
    new = np.tanh(z @ rng.standard_normal((8, d_new)))
    old = z @ rng.standard_normal((8, d_old)) + 0.5  # unnormalised, with a common offset
    split = np.where(label % 4 == 0, "eval", "bridge")
    path = np.array([f"id{lab:03d}/img{i:03d}.jpg" for i, lab in enumerate(label)])
    return PairsSet(
        old=old.astype(np.float32),
        new=new.astype(np.float32),
        label=label.astype(np.int64),
        path=path,
        split=split,
    )


@pytest.fixture()
def pairs() -> PairsSet:
    return synthetic_pairs()


@pytest.fixture()
def make_pairs():  # the factory, for tests that need other sizes
    return synthetic_pairs
