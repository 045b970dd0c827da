"""Validating a transformer file against this service: the artefact contract (via the
runner), the backbone and gallery it must fit, probes for finite non-zero outputs, and the
validation pairs' metrics when configured."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from service.contracts import META_VALIDATION_SAMPLE
from service.errors import ContractError
from service.files import file_sha256
from service.gallery.store import gallery_dim, gallery_model_id
from service.metadata_fields import decode_vectors
from service.registry.records import BackboneFacts, StoredTransformer, backbone_facts, version_row
from service.vectors import l2_normalize

if TYPE_CHECKING:
    from service.inference.transformer import TransformerRunner
    from service.settings import ServiceSettings

log = logging.getLogger(__name__)

PROBE_SEED = 1234


def load_transformer_runner(
    path: Path, *, settings: ServiceSettings, name: str | None = None
) -> TransformerRunner:
    """A runner for a stored transformer file, with the service's providers and threads.
    ``name`` is what error messages call the file (the uploader's file name)."""
    from service.inference.transformer import TransformerRunner

    return TransformerRunner(
        path,
        providers=settings.providers,
        intra_op_threads=settings.ort_intra_op_threads,
        name=name,
    )


def _score_validation_pairs(
    runner: TransformerRunner, path: Path, *, flip: bool
) -> dict[str, float]:
    """Metrics of the transformer on a pairs file (eval split when present), scored as the
    service scores: fused for a two-way file; flip-averaged queries when ``flip`` and the file
    carries ``new_flip``."""
    from service.contracts import SPLIT_EVAL, load_pairs

    pairs = load_pairs(path)
    if pairs.split is not None and (pairs.split == SPLIT_EVAL).any():
        pairs = pairs.select_split(SPLIT_EVAL)
    if pairs.new_dim != runner.input_dim or pairs.old_dim != runner.output_dim:
        raise ContractError(
            f"validation pairs are {pairs.new_dim} -> {pairs.old_dim}; the transformer maps "
            f"{runner.input_dim} -> {runner.output_dim}"
        )
    new = np.asarray(pairs.new, dtype=np.float32)
    _probe_map(
        runner.map_raw,
        new,
        what="transformer",
        d_out=runner.output_dim,
        probes_are=f"the validation pairs' new-model vectors ({path.name})",
    )
    mapped = runner.map(new)
    old = l2_normalize(np.asarray(pairs.old, dtype=np.float32))
    metrics: dict[str, float] = {
        "validation_rows": float(len(pairs)),
        "validation_mean_cosine": float(np.mean(np.sum(mapped * old, axis=1))),
    }
    from service.evaluation.protocol import evaluate_mapping, runner_rows

    try:
        rows = runner_rows(pairs, runner=runner, flip=flip)
        report = evaluate_mapping(eval_pairs=pairs, mapped=rows)
    except Exception as exc:  # e.g. a pairs file without enough identities for the protocol
        log.warning("validation protocol skipped: %s", exc)
        return metrics
    for key, value in _flatten_report(report).items():
        metrics[f"validation_{key}"] = value
    return metrics


def _flatten_report(report: Any) -> dict[str, float]:
    """Numeric fields of an EvaluationReport's mapped row (best effort, never fails)."""
    out: dict[str, float] = {}
    try:
        rows = getattr(report, "rows", None)
        mapped = None
        if isinstance(rows, dict):
            mapped = rows.get("mapped")
        elif isinstance(rows, list | tuple):
            mapped = next((r for r in rows if getattr(r, "name", None) == "mapped"), None)
        source = mapped if mapped is not None else report
        values = source if isinstance(source, dict) else getattr(source, "__dict__", {})
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[str(key)] = float(value)
    except Exception:  # the report's shape belongs to another module: never block an upload
        return {}
    return out


def check_fits(
    runner: TransformerRunner,
    *,
    backbone: BackboneFacts,
    gallery_dim: int | None,
    gallery_model: str | None,
) -> None:
    """ContractError unless the transformer maps ``backbone``'s space into the gallery's:
    input dim and source model = the backbone's, output dim and target model = the gallery's
    (each check only where that fact is known)."""
    meta = runner.metadata
    if backbone.output_dim is not None and runner.input_dim != backbone.output_dim:
        raise ContractError(
            f"transformer input dim {runner.input_dim} != backbone output dim "
            f"{backbone.output_dim} ({backbone.model_id})"
        )
    if backbone.model_id is not None and meta.source_model != backbone.model_id:
        raise ContractError(
            f"transformer source model {meta.source_model!r} != backbone {backbone.model_id!r}"
        )
    if gallery_dim is not None and runner.output_dim != gallery_dim:
        raise ContractError(
            f"transformer output dim {runner.output_dim} != gallery dim {gallery_dim}"
        )
    if gallery_model is not None and meta.target_model != gallery_model:
        raise ContractError(
            f"transformer target model {meta.target_model!r} != gallery model {gallery_model!r}"
        )


def validate_transformer(
    runner: TransformerRunner,
    *,
    settings: ServiceSettings,
    expected_output_dim: int | None,
    expected_target_model: str | None,
) -> dict[str, float]:
    """Check a loaded transformer fits this service; returns validation metrics.

    Its outputs must be finite and non-zero on random unit probes, on the validation sample
    of real new-model vectors the file carries (``facebridge.validation_sample``, written at
    fit time) and on the validation pairs' ``new`` vectors when configured.
    """
    meta = runner.metadata
    check_fits(
        runner,
        backbone=backbone_facts(settings),
        gallery_dim=expected_output_dim,
        gallery_model=expected_target_model,
    )
    if meta.threshold is not None and not -1.0 <= meta.threshold <= 1.0:
        raise ContractError(f"transformer threshold {meta.threshold} is not a cosine in [-1, 1]")
    rng = np.random.default_rng(PROBE_SEED)
    probes = l2_normalize(rng.standard_normal((settings.probe_vectors, runner.input_dim)))
    _probe_map(runner.map_raw, probes, what="transformer", d_out=runner.output_dim)
    if runner.two_way:
        gallery_probes = l2_normalize(
            rng.standard_normal((settings.probe_vectors, runner.output_dim))
        )
        _probe_map(
            runner.map_gallery_raw,
            gallery_probes,
            what="transformer's gallery map",
            d_out=runner.input_dim,
        )
    if meta.validation_sample is not None:
        sample = decode_vectors(
            meta.validation_sample, dim=runner.input_dim, key=META_VALIDATION_SAMPLE
        )
        _probe_map(
            runner.map_raw,
            l2_normalize(sample),
            what="transformer",
            d_out=runner.output_dim,
            probes_are="its validation sample of real face vectors",
        )
    metrics: dict[str, float] = {}
    if settings.validation_pairs is not None:
        metrics.update(
            _score_validation_pairs(
                runner, settings.validation_pairs, flip=settings.flip_average_queries
            )
        )
    return metrics


def _probe_map(
    run: Callable[[np.ndarray], np.ndarray],
    probes: np.ndarray,
    *,
    what: str,
    d_out: int,
    probes_are: str = "random probe vectors",
) -> None:
    """One head of a transformer on ``probes``: runs, [n, d_out], finite, non-zero."""
    try:
        raw = run(probes)
    except Exception as exc:
        raise ContractError(f"{what} fails on {probes_are} ({type(exc).__name__})") from exc
    if raw.shape != (probes.shape[0], d_out):
        raise ContractError(f"{what} returned shape {raw.shape} for {probes.shape} probes")
    bad = ~np.isfinite(raw).all(axis=1)
    if bad.any():
        raise ContractError(
            f"{what} outputs NaN/inf on {int(bad.sum())} of {len(raw)} of {probes_are}"
        )
    if (np.linalg.norm(raw, axis=1) == 0).any():
        raise ContractError(f"{what} outputs zero vectors on {probes_are}")


def validate_stored_version(
    *, session_factory: sessionmaker[Session], settings: ServiceSettings, version: str
) -> None:
    """A stored version's file is intact and still fits the backbone and the gallery."""
    with session_factory() as session:
        info = StoredTransformer.from_row(
            version_row(session, version), directory=settings.transformers_path
        )
        expected_dim = gallery_dim(session=session, settings=settings)
        expected_model = gallery_model_id(session=session, settings=settings)
    check_stored_file(info)
    validate_transformer(
        load_transformer_runner(info.file, settings=settings),
        settings=settings.model_copy(update={"validation_pairs": None}),
        expected_output_dim=expected_dim,
        expected_target_model=expected_model,
    )


def check_stored_file(info: StoredTransformer) -> None:
    """ContractError unless the version's file is there with the sha256 of its row."""
    try:  # not is_file() then read: a concurrent delete may remove it in between
        digest = file_sha256(info.file)
    except OSError as exc:
        raise ContractError(f"transformer file of {info.version} is missing: {info.file}") from exc
    if digest != info.sha256:
        raise ContractError(f"transformer file of {info.version} is corrupt (sha256 mismatch)")
