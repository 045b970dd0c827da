"""Export a fitted transformer as the ONNX artefact of the contract, validated, not trusted.

One file (no external data), input ``new_embedding`` [batch, d_new], output ``old_embedding``
[batch, d_old], symbolic batch, ``metadata_props`` from :class:`TransformerMetadata`. A two-way
fitted transformer (``fusion_weight`` < 1) also gets the input ``gallery_old_embedding``
[gallery, d_old] and the output ``gallery_new_embedding`` [gallery, d_new] (the backward map,
its own symbolic batch) and ``facebridge.fusion_weight`` in the metadata. After writing:
onnx.checker, a fresh :class:`TransformerRunner` (names, dims, metadata), and cosine parity
torch vs ONNX Runtime >= 0.9999 at batch 1, 7 and 256 on every export, for each head. The
file's sha256 goes into the report and into ``FILE.onnx.sha256`` beside it.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.contracts import (
    TRANSFORMER_GALLERY_INPUT,
    TRANSFORMER_GALLERY_OUTPUT,
    TRANSFORMER_INPUT,
    TRANSFORMER_OUTPUT,
    TransformerMetadata,
)
from service.decision import ScoreCalibration
from service.errors import ContractError
from service.files import atomic_path, file_sha256
from service.inference.transformer import TransformerRunner
from service.metadata_fields import encode_vectors, evenly_spaced_unit_rows
from service.vectors import l2_normalize
from training.transformers.fit import FittedTransformer
from training.transformers.models import TwoWayMap

PARITY_BATCHES = (1, 7, 256)
VALIDATION_SAMPLE_ROWS = 32
PARITY_MIN_COSINE = 0.9999
OPSET = 17


@dataclass(frozen=True)
class ExportReport:
    path: Path
    sha256: str
    sha256_path: Path
    parity: dict[int, float]  # batch size -> minimum row cosine torch vs ORT (forward head)
    metadata: TransformerMetadata
    size_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)
    # two-way only: batch size -> minimum row cosine of the backward head
    parity_backward: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": str(self.path),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "parity_min_cosine": {str(k): v for k, v in self.parity.items()},
            "metadata": self.metadata.to_props(),
        }
        if self.parity_backward:
            out["parity_backward_min_cosine"] = {str(k): v for k, v in self.parity_backward.items()}
        return out


def default_metadata(
    fitted: FittedTransformer,
    *,
    source_model: str,
    target_model: str,
    threshold: float | None = None,
    metrics: dict[str, float] | None = None,
    calibrations: Sequence[ScoreCalibration] = (),
    validation_new: np.ndarray | None = None,
) -> TransformerMetadata:
    """The artefact's metadata. ``validation_new``: new-model vectors of the fit rows, of which
    ``VALIDATION_SAMPLE_ROWS`` evenly spaced ones are stored as the validation sample the
    service validates uploads on (``facebridge.validation_sample``)."""
    sample = None
    if validation_new is not None and len(validation_new):
        sample = encode_vectors(
            evenly_spaced_unit_rows(validation_new, rows=VALIDATION_SAMPLE_ROWS)
        )
    return TransformerMetadata(
        input_dim=fitted.input_dim,
        output_dim=fitted.output_dim,
        source_model=source_model,
        target_model=target_model,
        recipe=fitted.recipe.name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        threshold=threshold,
        metrics=dict(metrics or {}),
        fusion_weight=fitted.fusion_weight,
        calibrations=tuple(calibrations),
        validation_sample=sample,
    )


def _export_graph(fitted: FittedTransformer, out_path: Path) -> None:
    """torch -> ONNX, batch dimensions symbolic (a two-way fit: both maps in one graph, two
    inputs and two outputs with independent batch dims).

    The TorchScript-based exporter (``dynamo=False``, ``dynamic_axes``): deprecated in torch 2.13
    but ~10x faster here than the dynamo exporter (0.1-1 s vs ~10 s per export on a loaded CPU),
    and these models are plain MLP/conv graphs it handles exactly; the parity check below would
    catch a divergence.
    """
    forward = copy.deepcopy(fitted.module)  # the fitted ones stay on their device
    inputs, outputs = [TRANSFORMER_INPUT], [TRANSFORMER_OUTPUT]
    example: tuple[torch.Tensor, ...] = (torch.zeros(2, fitted.input_dim),)
    axes = {TRANSFORMER_INPUT: {0: "batch"}, TRANSFORMER_OUTPUT: {0: "batch"}}
    module: torch.nn.Module = forward
    if fitted.backward is not None:
        module = TwoWayMap(forward, copy.deepcopy(fitted.backward))
        inputs.append(TRANSFORMER_GALLERY_INPUT)
        outputs.append(TRANSFORMER_GALLERY_OUTPUT)
        example = (*example, torch.zeros(3, fitted.output_dim))
        axes |= {
            TRANSFORMER_GALLERY_INPUT: {0: "gallery"},
            TRANSFORMER_GALLERY_OUTPUT: {0: "gallery"},
        }
    module = module.to("cpu").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(out_path),
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )


def _parity(
    reference: Callable[[np.ndarray], np.ndarray],
    exported: Callable[[np.ndarray], np.ndarray],
    *,
    dim: int,
    seed: int,
) -> dict[int, float]:
    """Min row cosine torch vs ONNX Runtime on random unit inputs, per batch size."""
    rng = np.random.default_rng(seed)
    result: dict[int, float] = {}
    for batch in PARITY_BATCHES:
        x = l2_normalize(rng.standard_normal((batch, dim)).astype(np.float32))
        cos = np.sum(l2_normalize(reference(x)) * l2_normalize(exported(x)), axis=1)
        result[batch] = float(cos.min())
    return result


def export_transformer(
    fitted: FittedTransformer, path: str | Path, *, metadata: TransformerMetadata
) -> ExportReport:
    """Write, validate and checksum the artefact at ``path``. Fails loudly (ContractError) and
    leaves nothing at ``path`` when any check fails."""
    import onnx

    path = Path(path)
    if (metadata.input_dim, metadata.output_dim) != (fitted.input_dim, fitted.output_dim):
        raise ContractError(
            f"metadata dims {metadata.input_dim} -> {metadata.output_dim} do not match the "
            f"fitted transformer's {fitted.input_dim} -> {fitted.output_dim}"
        )
    if metadata.fusion_weight != fitted.fusion_weight:
        raise ContractError(
            f"metadata fusion_weight {metadata.fusion_weight} does not match the fitted "
            f"transformer's {fitted.fusion_weight}"
        )
    with atomic_path(path) as tmp:
        _export_graph(fitted, tmp)
        model = onnx.load(str(tmp))
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, metadata.to_props())
        onnx.checker.check_model(model, full_check=True)
        onnx.save_model(model, str(tmp), save_as_external_data=False)
        runner = TransformerRunner(tmp, intra_op_threads=1)  # names, dims, symbolic batch
        parity = _parity(fitted.transform, runner.map_raw, dim=fitted.input_dim, seed=fitted.seed)
        parity_backward = (
            _parity(
                fitted.transform_gallery,
                runner.map_gallery_raw,
                dim=fitted.output_dim,
                seed=fitted.seed + 1,
            )
            if fitted.two_way
            else {}
        )
        for head, values in (("forward", parity), ("backward", parity_backward)):
            worst = min(values.values(), default=1.0)
            if worst < PARITY_MIN_COSINE:
                raise ContractError(
                    f"export parity failed ({head} head): torch vs ONNX Runtime cosine "
                    f"{worst:.6f} < {PARITY_MIN_COSINE} (per batch: {values})"
                )
        digest = file_sha256(tmp)
    sha_path = path.with_name(path.name + ".sha256")
    sha_path.write_text(f"{digest}  {path.name}\n")
    return ExportReport(
        path=path,
        sha256=digest,
        sha256_path=sha_path,
        parity=parity,
        metadata=metadata,
        size_bytes=path.stat().st_size,
        parity_backward=parity_backward,
    )
