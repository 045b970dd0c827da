"""Several pairs files as one fit set (``facebridge transformer fit --pairs A --pairs B``).

The first file is the *primary* one (e.g. the kit's bridge set): its ``eval`` rows evaluate the
fitted file. Every later file (e.g. captures exported by the service, ``facebridge migration
export-pairs``) adds fit rows. Rules:

- Each file is validated on its own against the pairs contract
  (:func:`service.contracts.load_pairs`), and must have the first file's ``old`` and ``new``
  dimensions; a mismatch is one line naming the file.
- Rows: each file's ``bridge`` rows (every row with ``all_rows`` or when it has no ``split``
  column), concatenated in the order given.
- Identities: two rows share an identity when BOTH of their files have a ``name`` column and the
  names are equal (a capture of "alice" joins the kit's "alice"); otherwise every file's labels
  are kept apart (file k's label 3 is not file j's label 3). Labels are renumbered 0..C-1.
- ``name``, ``path`` and ``new_flip`` are kept only when every file has them (without ``path``,
  row order stands in for it: the first file's rows come first); other columns are dropped.
- ``repeat`` (oversampling): in the *training* rows (:meth:`CombinedPairs.training`) every row of
  the second and later files appears ``repeat`` times; the threshold and the open-set
  calibration use every row once (:attr:`CombinedPairs.pairs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.contracts import SPLIT_EVAL, PairsSet
from service.errors import InvalidInput
from training.transformers.data import TrainingPairs, normalized_pairs


@dataclass(frozen=True)
class CombinedPairs:
    """The concatenated fit rows and, per row, the index of the file it came from."""

    pairs: PairsSet
    source: np.ndarray
    notes: tuple[str, ...] = ()

    def training(self, *, repeat: int = 1) -> TrainingPairs:
        """Normalised training rows; rows of files 1.. appear ``repeat`` times."""
        if repeat < 1:
            raise InvalidInput(f"repeat must be >= 1, got {repeat}")
        counts = np.where(self.source == 0, 1, repeat)
        return normalized_pairs(self.pairs).take(np.repeat(np.arange(len(self.pairs)), counts))


def select_rows(pairs: PairsSet, split: str, all_rows: bool) -> PairsSet:
    """The rows of ``split`` unless ``all_rows`` or the file has no split column."""
    if all_rows or pairs.split is None:
        return pairs
    return pairs.select_split(split)


def _identity_labels(parts: Sequence[PairsSet]) -> np.ndarray:
    """Renumbered labels: shared by name across files that both have names, else per file."""
    keys: list[str] = []  # "n:<name>" or "f<k>:<label>": the prefixes never collide
    for k, part in enumerate(parts):
        if part.name is not None:
            keys += [f"n:{n}" for n in part.name]
        else:
            keys += [f"f{k}:{int(lab)}" for lab in part.label]
    _, labels = np.unique(np.array(keys, dtype=str), return_inverse=True)
    return labels.reshape(-1).astype(np.int64)


def _joined(parts: Sequence[PairsSet], attr: str) -> np.ndarray | None:
    columns = [getattr(p, attr) for p in parts]
    if any(c is None for c in columns):
        return None
    return np.concatenate([np.asarray(c) for c in columns])


def combine_pairs(parts: Sequence[PairsSet], *, sources: Sequence[str]) -> CombinedPairs:
    """Concatenate already-selected fit rows of several pairs sets (see the module rules)."""
    if not parts:
        raise InvalidInput("no pairs files given")
    first = parts[0]
    for part, source in zip(parts[1:], sources[1:], strict=True):
        if (part.old_dim, part.new_dim) != (first.old_dim, first.new_dim):
            raise InvalidInput(
                f"{source}: old/new dims {part.old_dim}/{part.new_dim} differ from "
                f"{sources[0]} ({first.old_dim}/{first.new_dim})"
            )
    notes = []
    flips = [p.new_flip is not None for p in parts]
    if any(flips) and not all(flips):
        notes.append("new_flip dropped: not every pairs file has it (plain queries)")
    combined = PairsSet(
        old=np.concatenate([np.asarray(p.old, dtype=np.float32) for p in parts]),
        new=np.concatenate([np.asarray(p.new, dtype=np.float32) for p in parts]),
        label=_identity_labels(parts),
        name=_joined(parts, "name"),
        path=_joined(parts, "path"),
        new_flip=_joined(parts, "new_flip"),
    )
    source = np.concatenate([np.full(len(p), k, dtype=np.int64) for k, p in enumerate(parts)])
    return CombinedPairs(pairs=combined, source=source, notes=tuple(notes))


def eval_overlap(primary: PairsSet, combined: CombinedPairs, *, all_rows: bool) -> tuple[str, ...]:
    """A warning when fit rows of the later files name identities of the primary file's eval
    rows: the eval figures would then not be on unseen people (docs/PROTOCOL.md)."""
    if all_rows or primary.split is None or primary.name is None or combined.pairs.name is None:
        return ()
    eval_names = set(primary.name[primary.split == SPLIT_EVAL].tolist())
    later = set(combined.pairs.name[combined.source > 0].tolist())
    shared = sorted(eval_names & later)
    if not shared:
        return ()
    return (
        f"WARNING: {len(shared)} identities of the later --pairs files are in the first "
        f"file's eval split (e.g. {shared[0]!r}): its eval figures are not on unseen people",
    )
