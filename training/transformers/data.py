"""The training view of a pairs set: both sides L2-normalised once, here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.contracts import PairsSet
from service.errors import InvalidInput
from service.vectors import l2_normalize


@dataclass(frozen=True)
class TrainingPairs:
    """Row i: ``new[i]`` (input) should map onto ``old[i]`` (target); both unit length."""

    new: np.ndarray
    old: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def new_dim(self) -> int:
        return int(self.new.shape[1])

    @property
    def old_dim(self) -> int:
        return int(self.old.shape[1])

    def take(self, rows: np.ndarray) -> TrainingPairs:
        return TrainingPairs(new=self.new[rows], old=self.old[rows], label=self.label[rows])


def normalized_pairs(pairs: PairsSet) -> TrainingPairs:
    """THE training-side normaliser: both sides of a pairs set, once, at load."""
    if len(pairs) == 0:
        raise InvalidInput("pairs set is empty: nothing to fit on")
    return TrainingPairs(
        new=l2_normalize(pairs.new),
        old=l2_normalize(pairs.old),
        label=np.asarray(pairs.label, dtype=np.int64),
    )
