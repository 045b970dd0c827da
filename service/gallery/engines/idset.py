"""A set of int64 face ids that stays compact and fast at 10M entries (a Python set of ints
costs ~60 bytes per id and seconds to build at start-up)."""

from __future__ import annotations

import numpy as np

COMPACT_REMOVED = 65_536  # removals folded into the sorted runs past this many


class IdSet:
    """Sorted, disjoint int64 runs merged like an LSM tree (amortised O(n log n) for n adds),
    plus a small set of removed ids. Not thread-safe: the store's lock guards it."""

    def __init__(self, ids: np.ndarray | None = None) -> None:
        self._runs: list[np.ndarray] = []
        self._removed: set[int] = set()
        if ids is not None and len(ids):
            self._runs.append(np.unique(np.asarray(ids, np.int64)))

    def __len__(self) -> int:
        return sum(int(r.size) for r in self._runs) - len(self._removed)

    def _removed_array(self) -> np.ndarray:
        return np.fromiter(self._removed, np.int64, count=len(self._removed))

    def contains_many(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64).reshape(-1)
        found = np.zeros(ids.shape, bool)
        for run in self._runs:
            pos = np.minimum(np.searchsorted(run, ids), run.size - 1)
            found |= run[pos] == ids
        if self._removed:
            found &= ~np.isin(ids, self._removed_array())
        return found

    def __contains__(self, face_id: object) -> bool:
        if not isinstance(face_id, int | np.integer):
            return False
        return bool(self.contains_many(np.asarray([face_id], np.int64))[0])

    def add(self, ids: np.ndarray) -> None:
        """Add unique ids that are not members (the caller checked)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        if self._removed:  # still physically in a run: un-remove instead of adding again
            back = np.isin(ids, self._removed_array())
            self._removed.difference_update(ids[back].tolist())
            ids = ids[~back]
        if ids.size == 0:
            return
        self._runs.append(np.sort(ids))
        while len(self._runs) >= 2 and self._runs[-2].size <= 2 * self._runs[-1].size:
            last = self._runs.pop()
            self._runs[-1] = np.sort(np.concatenate([self._runs[-1], last]))

    def discard(self, ids: np.ndarray) -> None:
        """Remove ids that are members (the caller checked)."""
        self._removed.update(np.asarray(ids, np.int64).reshape(-1).tolist())
        if len(self._removed) >= COMPACT_REMOVED:
            gone = self._removed_array()
            self._runs = [r[~np.isin(r, gone)] for r in self._runs]
            self._runs = [r for r in self._runs if r.size]
            self._removed.clear()

    def to_array(self) -> np.ndarray:
        """Sorted int64 array of the members."""
        if not self._runs:
            return np.zeros(0, np.int64)
        merged = self._runs[0] if len(self._runs) == 1 else np.sort(np.concatenate(self._runs))
        if self._removed:
            merged = merged[~np.isin(merged, self._removed_array())]
        return merged
