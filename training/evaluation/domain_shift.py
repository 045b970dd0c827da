"""Evaluation sets for a domain shift, and the captures a deployment would record there.

Inputs: the kit's ``eval`` rows (``kit``, the ORIGINAL photos) and ``shifted``: pairs extracted
from degraded copies of (some of) the same photos, matched to the kit by ``path``. The
deployment: everyone was enrolled from an original photo (old-model vectors), and queries now
come from the shifted domain.

- The eval identities with >= 2 images are split by a fixed hash into a **capture** half
  (``sha1("capture" + name)`` odd) and a **test** half (even); no person is in both.
- Test sets (docs/PROTOCOL.md), one row per image, kit labels and names:
  - every single-image identity: its original row (a distractor);
  - capture half: the original template only (first image by ``path``), so it stays in the
    gallery as a distractor, as it would in the deployment;
  - test half: the original template + the shifted rows of its other images.
  ``closed`` is that set (closed-set rows); ``open`` differs only for the strangers of the
  open-set split (:func:`training.evaluation.openset.is_enrolled` false): all their images are
  shifted, because every one of them is a non-mated search.
  Template and distractor rows carry ``new_flip = new`` (the kit has none; a gallery row is
  never a query, so it is never used); shifted rows keep their ``new_flip``.
- ``captures``: for each shifted image of a capture-half identity except its template photo,
  the row (``new`` = its flip-averaged native query vector when the shifted pairs carry
  ``new_flip``, else ``new``; ``old`` = the identity's ORIGINAL template old vector): exactly
  what the service records for a confident identification. Every capture is correct here (an
  oracle capture rule; the service's rule and its false captures are not modelled).
- ``original``: the kit rows of the closed set's identities, unshifted, for reference.
- Diagnostics: ``captures_own_old`` = the captures with each photo's OWN original old vector as
  the target (a same-photo bridge pair; the service cannot record it), and
  ``shift_sets(..., capture_templates=False)``: the capture half's templates left out of the
  test galleries.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from service.contracts import PairsSet
from service.errors import InvalidInput
from service.evaluation.metrics import PairedComparison, mcnemar_exact, top_k_hits
from service.evaluation.protocol import (
    ROW_MAPPED,
    ROW_NEW_NEW,
    ROW_OLD_OLD,
    MappedRows,
    build_gallery_and_probes,
    evaluate_mapping,
    exact_search,
    mapped_vectors,
)
from service.vectors import flip_average, l2_normalize
from training.evaluation.openset import evaluate_open_set, is_enrolled
from training.transformers.data import TrainingPairs, normalized_pairs
from training.transformers.multi_pairs import combine_pairs

CAPTURE_SALT = "capture"


def is_capture_identity(name: str) -> bool:
    """The fixed capture/test split: ``int(sha1("capture" + name).hexdigest(), 16)`` is odd."""
    return int(hashlib.sha1((CAPTURE_SALT + name).encode("utf-8")).hexdigest(), 16) % 2 == 1


@dataclass(frozen=True)
class ShiftSets:
    closed: PairsSet
    open: PairsSet
    captures: PairsSet
    original: PairsSet
    captures_own_old: PairsSet  # diagnostic: each capture's own original photo's old vector

    def counts(self) -> dict[str, int]:
        return {
            "closed_rows": len(self.closed),
            "open_rows": len(self.open),
            "captures": len(self.captures),
            "capture_identities": int(np.unique(self.captures.label).size),
        }


def _identities(kit: PairsSet) -> dict[str, list[int]]:
    """name -> the kit rows of that identity, sorted by path."""
    assert kit.name is not None and kit.path is not None
    groups: dict[str, list[int]] = {}
    for i in np.argsort(kit.path, kind="stable"):
        groups.setdefault(str(kit.name[i]), []).append(int(i))
    return groups


def _rows(
    kit: PairsSet, shifted: PairsSet, picks: list[tuple[str, int]], *, flip_queries: bool = False
) -> PairsSet:
    """One PairsSet from ("kit" | "shifted", row) picks, labels/names/paths from the kit."""
    assert kit.path is not None and shifted.path is not None
    kit_row = {str(p): i for i, p in enumerate(kit.path)}
    old, new, flip, rows = [], [], [], []
    for source, i in picks:
        if source == "kit":
            old.append(kit.old[i])
            new.append(kit.new[i])
            flip.append(kit.new[i])
            rows.append(i)
        else:
            query = shifted.new[i : i + 1]
            if flip_queries and shifted.new_flip is not None:
                query = flip_average(query, shifted.new_flip[i : i + 1])
            old.append(shifted.old[i])
            new.append(query[0])
            flip.append(shifted.new[i] if shifted.new_flip is None else shifted.new_flip[i])
            rows.append(kit_row[str(shifted.path[i])])
    index = np.array(rows, dtype=np.int64)
    assert kit.name is not None
    return PairsSet(
        old=np.array(old, dtype=np.float32),
        new=np.array(new, dtype=np.float32),
        label=np.asarray(kit.label)[index],
        name=np.asarray(kit.name)[index],
        path=np.asarray(kit.path)[index],
        new_flip=np.array(flip, dtype=np.float32),
    )


def _test_picks(
    groups: dict[str, list[int]],
    shifted_of: dict[str, int],
    kit: PairsSet,
    *,
    open_set: bool,
    capture_templates: bool,
) -> list[tuple[str, int]]:
    """("kit" | "shifted", row) picks of a test set (module docstring)."""
    assert kit.path is not None
    picks: list[tuple[str, int]] = []
    for name, rows in sorted(groups.items()):
        captured = len(rows) >= 2 and is_capture_identity(name)
        if len(rows) < 2 or captured:
            if capture_templates or not captured:
                picks.append(("kit", rows[0]))  # a distractor: the original photo
            continue
        if open_set and not is_enrolled(name):  # a stranger: every image is a search
            searches = rows
        else:
            picks.append(("kit", rows[0]))  # the enrolment template: the original photo
            searches = rows[1:]
        paths = [str(kit.path[r]) for r in searches]
        picks += [("shifted", shifted_of[p]) for p in paths if p in shifted_of]
    return picks


def shift_sets(*, kit: PairsSet, shifted: PairsSet, capture_templates: bool = True) -> ShiftSets:
    """The test sets, the captures and the unshifted reference (module docstring).
    ``capture_templates=False`` leaves the capture half's templates out of the test galleries
    (a diagnostic: does a refit pull other people's queries towards the captured ones?)."""
    if kit.name is None or kit.path is None or shifted.path is None:
        raise InvalidInput("domain shift needs name and path columns in both pairs sets")
    shifted_of = {str(p): i for i, p in enumerate(shifted.path)}
    kit_paths = {str(p) for p in kit.path}
    unknown = sorted(set(shifted_of) - kit_paths)
    if unknown:
        raise InvalidInput(f"{len(unknown)} shifted rows are not kit rows, e.g. {unknown[0]!r}")
    groups = _identities(kit)
    closed = _test_picks(
        groups, shifted_of, kit, open_set=False, capture_templates=capture_templates
    )
    open_picks = _test_picks(
        groups, shifted_of, kit, open_set=True, capture_templates=capture_templates
    )
    captures, templates = [], []
    for name, rows in sorted(groups.items()):
        if len(rows) < 2 or not is_capture_identity(name):
            continue
        for r in rows[1:]:
            if (p := str(kit.path[r])) in shifted_of:
                captures.append(("shifted", shifted_of[p]))
                templates.append(rows[0])
    if not captures:
        raise InvalidInput("no shifted image of a capture-half identity: no captures")
    capture_set = _rows(kit, shifted, captures, flip_queries=True)
    capture_set = PairsSet(
        old=np.asarray(kit.old[np.array(templates, dtype=np.int64)], dtype=np.float32),
        new=capture_set.new,
        label=capture_set.label,
        name=capture_set.name,
        path=capture_set.path,
    )
    kit_row = {str(p): i for i, p in enumerate(kit.path)}
    assert capture_set.path is not None
    own = np.array([kit_row[str(p)] for p in capture_set.path], dtype=np.int64)
    unshifted = [(s, i if s == "kit" else kit_row[str(shifted.path[i])]) for s, i in closed]
    return ShiftSets(
        closed=_rows(kit, shifted, closed),
        open=_rows(kit, shifted, open_picks),
        captures=capture_set,
        captures_own_old=replace(capture_set, old=np.asarray(kit.old[own], dtype=np.float32)),
        original=_rows(kit, shifted, [("kit", i) for _, i in unshifted]),
    )


# ---------------------------------------------------------------------------------------------
# The comparison: kit-only transformer vs refit on kit bridge + captures
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShiftRow:
    """One row of the table: shifted-domain figures, and top-1 on the same people unshifted."""

    name: str
    top1: float
    top5: float
    fnir_at_fpir_1e2: float
    original_top1: float
    fit_rows: int | None = None
    vs_kit_only: PairedComparison | None = None  # top-1 per probe, paired with the kit-only map


def top1_hits(pairs: PairsSet, mapped: MappedRows) -> np.ndarray:
    """Per-probe top-1 hits of the mapped row on ``pairs`` (the protocol's gallery and probes,
    its search and its scores), for a paired test between two maps."""
    split = build_gallery_and_probes(pairs)
    labels = np.asarray(pairs.label)
    probes, gallery = mapped_vectors(
        mapped,
        query_rows=split.probe_rows,
        gallery_rows=split.gallery_rows,
        old_gallery=l2_normalize(pairs.old[split.gallery_rows]),
    )
    ranked = exact_search(gallery=gallery, probes=probes, k=1)
    return top_k_hits(
        ranked_ids=ranked,
        gallery_labels=labels[split.gallery_rows],
        probe_labels=labels[split.probe_rows],
        k=1,
    )


def _report_row(name: str, closed: Any, open_set: Any, original: Any, row: str) -> ShiftRow:
    return ShiftRow(
        name=name,
        top1=float(closed.row(row).top1),
        top5=float(closed.row(row).top5),
        fnir_at_fpir_1e2=100.0 * float(open_set.fnir[row][0.01]),
        original_top1=float(original.row(row).top1),
    )


def training_sets(
    *, sets: ShiftSets, kit_bridge: PairsSet, repeats: tuple[int, ...], diagnostics: bool = True
) -> dict[str, TrainingPairs]:
    """The fits compared: kit bridge only, kit bridge + captures (x each repeat), captures only;
    with ``diagnostics``, kit bridge + captures whose target is the capture's OWN original photo
    (what a same-photo bridge pair would be; the service cannot record it)."""
    combined = combine_pairs([kit_bridge, sets.captures], sources=["kit bridge", "captures"])
    fits = {"mapped, kit bridge only": normalized_pairs(kit_bridge)}
    for r in repeats:
        fits[f"mapped, refit: kit bridge + captures x{r}"] = combined.training(repeat=r)
    fits["mapped, refit: captures only"] = normalized_pairs(sets.captures)
    if diagnostics:
        own = combine_pairs([kit_bridge, sets.captures_own_old], sources=["kit", "own"])
        fits["diagnostic: kit bridge + captures x1, own-photo targets"] = own.training()
    return fits


def refit_rows(
    *,
    sets: ShiftSets,
    kit_bridge: PairsSet,
    recipe: Any,
    repeats: tuple[int, ...] = (1,),
    seed: int = 0,
    flip: bool = True,
    diagnostics: bool = True,
) -> list[ShiftRow]:
    """old/old and new/new, then each fit of :func:`training_sets` mapped, on the shifted test
    sets (closed-set top-1/top-5, open-set FNIR@FPIR=1%) and on the unshifted reference."""
    from training.transformers.fit import fit_normalized  # torch: imported when called

    rows: list[ShiftRow] = []
    kit_only_hits: np.ndarray | None = None
    fits = training_sets(sets=sets, kit_bridge=kit_bridge, repeats=repeats, diagnostics=diagnostics)
    for name, train in fits.items():
        fitted = fit_normalized(train=train, recipe=recipe, seed=seed, progress=False)
        reports = [
            evaluate_mapping(eval_pairs=s, mapped=fitted.map_rows(s, flip=flip))
            for s in (sets.closed, sets.original)
        ]
        open_set = evaluate_open_set(
            eval_pairs=sets.open, mapped=fitted.map_rows(sets.open, flip=flip)
        )
        if not rows:
            rows += [
                _report_row(row, reports[0], open_set, reports[1], row)
                for row in (ROW_OLD_OLD, ROW_NEW_NEW)
            ]
        hits = top1_hits(sets.closed, fitted.map_rows(sets.closed, flip=flip))
        paired = None if kit_only_hits is None else mcnemar_exact(hits_a=hits, hits_b=kit_only_hits)
        kit_only_hits = hits if kit_only_hits is None else kit_only_hits
        mapped = _report_row(name, reports[0], open_set, reports[1], ROW_MAPPED)
        rows.append(replace(mapped, fit_rows=len(train), vs_kit_only=paired))
    return rows


def format_table(rows: list[ShiftRow]) -> str:
    """Markdown: one line per row, top-1 relative to old/old on the shifted domain."""
    old = next(r for r in rows if r.name == ROW_OLD_OLD).top1
    lines = [
        "| row | fit rows | shifted top-1 | top-1 - old/old | vs kit-only: +/- probes, McNemar p "
        "| top-5 | FNIR@FPIR=1% | unshifted top-1 (same people) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fit = "-" if r.fit_rows is None else f"{r.fit_rows:,}"
        c = r.vs_kit_only
        paired = "-" if c is None else f"+{c.only_a}/-{c.only_b}, p={c.p_value:.3f}"
        lines.append(
            f"| {r.name} | {fit} | {r.top1:.2f} | {r.top1 - old:+.2f} | {paired} | {r.top5:.2f} "
            f"| {r.fnir_at_fpir_1e2:.2f} | {r.original_top1:.2f} |"
        )
    return "\n".join(lines) + "\n"
