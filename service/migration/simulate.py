"""``facebridge migration simulate``: the progressive migration replayed on a pairs file.

Split (docs/PROTOCOL.md, "Progressive migration"): per identity, rows sorted by ``path``;
identities with one row are distractors (their ``old`` vector in the gallery); otherwise the
first row's ``old`` vector is the template and the remaining rows alternate *stream* (2nd, 4th,
...) and *test* (3rd, 5th, ...). When the file has a ``split`` column only its ``eval`` rows are
used (the transformer was fitted on the ``bridge`` rows; ``all_rows`` uses every row).

The stream is identified once in a seeded random order with capture on, one image per request,
through the service's own code (:mod:`service.migration.search`: FAISS stores per space, the
transformer's runner and calibrations, fusion, the capture rule and its cap); the test
images are then identified with capture off. Queries are flip-averaged when the file carries
``new_flip`` (as the service sends them with ``FACEBRIDGE_FLIP_AVERAGE_QUERIES``).

FNIR at FPIR = 1%: the test images are the mated searches; each test image searched against
the gallery without its own identity is a non-mated search (its best other candidate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.contracts import PairsSet, load_pairs
from service.errors import InvalidInput
from service.gallery.engines.faiss import FaissStore
from service.migration.capture import CaptureRule, slot_for
from service.migration.search import (
    SpaceCalibrations,
    SpaceQuery,
    capture_verdicts,
    fused_candidates,
    search_spaces,
)
from service.vectors import QUERIES_FLIP, QUERIES_PLAIN, flip_average, l2_normalize

OLD, NATIVE = "old", "native"
TOP_K = 10


@dataclass(frozen=True)
class MigrationSplit:
    templates: np.ndarray  # row per enrolled identity
    distractors: np.ndarray
    stream: np.ndarray
    test: np.ndarray


def migration_split(pairs: PairsSet, rows: np.ndarray) -> MigrationSplit:
    """The fixed split of ``rows`` (module docstring)."""
    labels = np.asarray(pairs.label)[rows]
    paths = np.asarray(pairs.path if pairs.path is not None else rows.astype(str))[rows]
    order = np.lexsort((paths, labels))
    parts: dict[str, list[int]] = {"t": [], "d": [], "s": [], "x": []}
    start = 0
    while start < order.size:
        end = start
        while end < order.size and labels[order[end]] == labels[order[start]]:
            end += 1
        group = rows[order[start:end]]
        if group.size == 1:
            parts["d"].append(int(group[0]))
        else:
            parts["t"].append(int(group[0]))
            parts["s"] += [int(r) for r in group[1::2]]
            parts["x"] += [int(r) for r in group[2::2]]
        start = end
    return MigrationSplit(*(np.asarray(parts[k], np.int64) for k in "tdsx"))


def fnir_at(mated: np.ndarray, correct: np.ndarray, nonmated: np.ndarray, fpir: float) -> float:
    """FNIR at ``fpir`` (docs/PROTOCOL.md): threshold from the non-mated best scores (accept
    ``score > t``), a mated search is a hit when its top-1 is right and above it."""
    n = nonmated.size
    allowed = math.floor(fpir * n + 1e-9)
    t = -np.inf if allowed >= n else float(np.sort(nonmated)[n - 1 - allowed])
    return float(1.0 - np.mean(correct & (mated > t)))


def _exact(queries: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray, labels):  # type: ignore[no-untyped-def]
    """Plain NumPy top-1 (score, correct) and the best other-identity score per query."""
    scores = queries @ gallery.T
    best = np.argmax(scores, axis=1)
    top = scores[np.arange(len(queries)), best]
    other = np.where(gallery_labels[None, :] == labels[:, None], -np.inf, scores).max(axis=1)
    return top, gallery_labels[best] == labels, other


class Simulation:
    """The in-process gallery of one simulation: an old-space and a native FAISS store."""

    def __init__(
        self, *, pairs: PairsSet, split: MigrationSplit, transformer: Any, rule: CaptureRule
    ):
        self.pairs, self.split, self.transformer, self.rule = pairs, split, transformer, rule
        gallery = np.concatenate([split.templates, split.distractors])
        self.labels = np.asarray(pairs.label)
        self.identity = list(self.labels[gallery])  # face id -> identity (label)
        self.stores = {
            OLD: FaissStore(dim=None, space=OLD),
            NATIVE: FaissStore(dim=None, space=NATIVE),
        }
        self.stores[OLD].add(ids=np.arange(gallery.size), vectors=l2_normalize(pairs.old[gallery]))
        self.captured: dict[int, list[tuple[int, np.ndarray]]] = {}
        self.captures = self.false_captures = 0
        meta = transformer.metadata
        kind = QUERIES_FLIP if pairs.new_flip is not None else QUERIES_PLAIN
        self.calibrations = SpaceCalibrations.from_transformer(
            meta.calibrations,
            mapped=meta.calibration_for(queries=kind),
            native_space=NATIVE,
            queries=kind,
        )

    def queries(self, rows: np.ndarray) -> np.ndarray:
        new = self.pairs.new[rows]
        if self.pairs.new_flip is not None:
            return flip_average(new, self.pairs.new_flip[rows])
        return l2_normalize(np.asarray(new, np.float32))

    def identify(self, rows: np.ndarray):  # type: ignore[no-untyped-def]
        native = self.queries(rows)
        query = SpaceQuery(mapped=self.transformer.map(native), native={NATIVE: native})
        lookup = np.asarray(self.identity, np.int64)
        per_query = search_spaces(
            query,
            old_space=OLD,
            stores=self.stores,
            identity_of=lambda ids: lookup[ids],
            top_k=TOP_K,
        )
        candidates = fused_candidates(
            per_query,
            calibrations=self.calibrations,
            old_space=OLD,
            top_k=TOP_K,
            vectors_of=lambda ids: {i: 1 + len(self.captured.get(i, ())) for i in ids},
        )
        return native, per_query, candidates

    def stream(self, rows: np.ndarray) -> None:
        for row in rows:
            native, per_query, candidates = self.identify(np.asarray([row]))
            faces = sum(s.ntotal for s in self.stores.values())
            (verdict,) = capture_verdicts(
                per_query, candidates, rule=self.rule, gallery_faces=faces
            )
            if verdict.capture and verdict.identity_id is not None:
                self._capture(int(verdict.identity_id), native[0], truth=int(self.labels[row]))

    def _capture(self, identity: int, vector: np.ndarray, *, truth: int) -> None:
        held = self.captured.setdefault(identity, [])
        existing = np.asarray([v for _, v in held], np.float32).reshape(len(held), vector.size)
        keep, evict = slot_for(
            vector, existing, np.ones(len(held), bool), max_native=self.rule.max_native
        )
        if not keep:
            return
        if evict is not None:
            self.stores[NATIVE].remove(ids=[held.pop(evict)[0]])
        face_id = len(self.identity)
        self.identity.append(identity)
        self.stores[NATIVE].add(ids=[face_id], vectors=vector[None, :])
        held.append((face_id, vector))
        self.captures += 1
        self.false_captures += int(identity != truth)

    def test(self, rows: np.ndarray) -> tuple[float, float]:
        """(top-1 %, FNIR at FPIR 1 %) of ``rows`` (capture off)."""
        _, _, candidates = self.identify(rows)
        truth = self.labels[rows]
        mated = np.asarray([c[0].score if c else -np.inf for c in candidates])
        correct = np.asarray(
            [bool(c) and c[0].identity_id == t for c, t in zip(candidates, truth, strict=True)]
        )
        other = np.asarray(
            [
                next((x.score for x in c if x.identity_id != t), -np.inf)
                for c, t in zip(candidates, truth, strict=True)
            ]
        )
        return 100.0 * float(correct.mean()), 100.0 * fnir_at(mated, correct, other, 0.01)


def _coverage(sim: Simulation, enrolled: np.ndarray) -> float:
    """Share of enrolled identities with at least one native vector."""
    held = {i for i, v in sim.captured.items() if v}
    return len(held & {int(i) for i in enrolled}) / max(enrolled.size, 1)


def simulate(
    *,
    pairs_path: str | Path,
    transformer_path: str | Path,
    seed: int = 0,
    rule: CaptureRule | None = None,
    all_rows: bool = False,
) -> dict[str, Any]:
    """The figures of one simulation (module docstring), as a JSON-ready dict."""
    from service.inference.transformer import TransformerRunner

    pairs = load_pairs(pairs_path, mmap=False)
    transformer = TransformerRunner(transformer_path)
    use_eval = pairs.split is not None and not all_rows and bool((pairs.split == "eval").any())
    rows = np.flatnonzero(pairs.split == "eval") if use_eval else np.arange(len(pairs))
    split = migration_split(pairs, rows)
    if split.templates.size < 2 or split.test.size == 0:
        raise InvalidInput("simulation needs >= 2 identities with >= 3 rows each")
    sim = Simulation(pairs=pairs, split=split, transformer=transformer, rule=rule or CaptureRule())
    top1_before, fnir_before = sim.test(split.test)
    sim.stream(np.random.default_rng(seed).permutation(split.stream))
    top1_after, fnir_after = sim.test(split.test)
    gallery = np.concatenate([split.templates, split.distractors])
    labels = np.asarray(pairs.label)
    figures = {}
    for name, q, g in (
        ("old_old", l2_normalize(pairs.old[split.test]), l2_normalize(pairs.old[gallery])),
        (
            "new_new",
            sim.queries(split.test),
            l2_normalize(np.asarray(pairs.new[gallery], np.float32)),
        ),
    ):
        top, correct, other = _exact(q, g, labels[gallery], labels[split.test])
        figures[name] = (100.0 * float(correct.mean()), 100.0 * fnir_at(top, correct, other, 0.01))
    return {
        "rows": "eval" if use_eval else "all",
        "templates": int(split.templates.size),
        "distractors": int(split.distractors.size),
        "stream": int(split.stream.size),
        "test": int(split.test.size),
        "queries": QUERIES_FLIP if pairs.new_flip is not None else QUERIES_PLAIN,
        "top1_before": round(top1_before, 2),
        "top1_after": round(top1_after, 2),
        "top1_new_new": round(figures["new_new"][0], 2),
        "top1_old_old": round(figures["old_old"][0], 2),
        "captures": sim.captures,
        "false_captures": sim.false_captures,
        "coverage": round(_coverage(sim, labels[split.templates]), 4),
        "fnir_at_fpir_0.01_before": round(fnir_before, 2),
        "fnir_at_fpir_0.01_after": round(fnir_after, 2),
        "fnir_at_fpir_0.01_old_old": round(figures["old_old"][1], 2),
        "fnir_at_fpir_0.01_new_new": round(figures["new_new"][1], 2),
        "rule": {
            "fpir": sim.rule.fpir,
            "margin_decades": sim.rule.margin_decades,
            "max_native": sim.rule.max_native,
        },
        "seed": seed,
    }
