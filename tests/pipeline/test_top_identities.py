"""The identify reply's identities, looked up lazily in rank order, against the naive way:
look every searched face up, walk the ranking, keep each identity's best face, stop at top_k."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from service.gallery.hits import top_identities
from service.pipeline_types import GalleryHit


def _naive(ranked, table: dict[int, GalleryHit], top_k: int):  # type: ignore[no-untyped-def]
    out = []
    for ids, scores in ranked:
        seen: set[int] = set()
        found = []
        for face_id, score in zip(ids, scores, strict=True):
            hit = table.get(int(face_id))
            if face_id < 0 or hit is None or hit.identity_id in seen:
                continue
            seen.add(hit.identity_id)
            found.append((hit, float(score)))
            if len(found) == top_k:
                break
        out.append(found)
    return out


class CountingLookup:
    def __init__(self, table: dict[int, GalleryHit]) -> None:
        self.table, self.calls = table, []  # type: ignore[var-annotated]

    def __call__(self, face_ids: Sequence[int]) -> dict[int, GalleryHit]:
        self.calls.append(list(face_ids))
        return {f: self.table[f] for f in face_ids if f in self.table}


@pytest.mark.parametrize("seed", range(25))
def test_matches_the_naive_walk_over_every_searched_face(seed: int) -> None:
    rng = np.random.default_rng(seed)
    faces = 200
    owner = rng.integers(0, int(rng.integers(5, 120)), faces)  # few identities: many repeats
    table = {
        f: GalleryHit(face_id=f, identity_id=int(owner[f]), external_id=f"e{owner[f]}", name=None)
        for f in range(faces)
        if rng.random() > 0.15  # ~15% deleted since the search
    }
    ranked = []
    for _ in range(int(rng.integers(1, 5))):
        depth = int(rng.integers(0, 50))
        ids = rng.choice(faces, depth, replace=False).astype(np.int64)
        ids[rng.random(depth) < 0.05] = -1  # empty slots
        ranked.append((ids, np.sort(rng.random(depth).astype(np.float32))[::-1]))
    top_k = int(rng.integers(1, 8))
    lookup = CountingLookup(table)
    assert top_identities(ranked, lookup=lookup, top_k=top_k) == _naive(ranked, table, top_k)
    asked = [f for call in lookup.calls for f in call]
    assert len(asked) == len(set(asked))  # no face looked up twice


def test_one_lookup_of_top_k_faces_when_they_name_distinct_identities() -> None:
    table = {
        f: GalleryHit(face_id=f, identity_id=f, external_id=None, name=None) for f in range(60)
    }
    ranked = [(np.arange(50, dtype=np.int64), np.linspace(1, 0, 50, dtype=np.float32))]
    lookup = CountingLookup(table)
    found = top_identities(ranked, lookup=lookup, top_k=5)
    assert [h.face_id for h, _ in found[0]] == [0, 1, 2, 3, 4]
    assert lookup.calls == [[0, 1, 2, 3, 4]]  # not the 50 the re-ranking searched


def test_deleted_and_repeated_faces_are_walked_past() -> None:
    table = {
        1: GalleryHit(face_id=1, identity_id=7, external_id=None, name=None),
        2: GalleryHit(face_id=2, identity_id=7, external_id=None, name=None),
        4: GalleryHit(face_id=4, identity_id=8, external_id=None, name=None),
    }
    ranked = [(np.array([1, 2, 3, -1, 4], np.int64), np.array([5, 4, 3, 2, 1], np.float32))]
    lookup = CountingLookup(table)
    found = top_identities(ranked, lookup=lookup, top_k=2)
    assert [(h.face_id, s) for h, s in found[0]] == [(1, 5.0), (4, 1.0)]
    assert lookup.calls == [[1, 2], [3], [4]]
