"""Export an iResNet backbone to ONNX with its manifest (contract 3), validated after writing.

Checks: ``onnx.checker``, an ONNX Runtime session, input/output names and a
symbolic batch dimension, cosine parity torch vs ORT >= 0.9999 per row at each parity batch
size, one self-contained file (``external_data=False``), sha256 recorded in the manifest and
the report, and finally the service's own loader (``OnnxBackbone``) must accept the pair.
Compared by cosine: an untrained iResNet's outputs are large, so absolute errors mean nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from service.contracts import BackboneManifest
from service.errors import ContractError, InvalidInput
from service.files import atomic_path, file_sha256
from training.backbones.config import TrainConfig
from training.backbones.dataset import INPUT_NAME, OUTPUT_NAME, backbone_manifest
from training.backbones.iresnet import IResNet, backbone_from_config

PARITY_BATCHES: tuple[int, ...] = (1, 7, 256)
MIN_COSINE = 0.9999
OPSET = 18
Exporter = Literal["dynamo", "legacy"]
EXPORTERS: tuple[str, ...] = ("dynamo", "legacy")


@dataclass(frozen=True)
class BackboneExportReport:
    onnx_path: Path
    manifest_path: Path
    manifest: BackboneManifest
    sha256: str
    size_bytes: int
    parity: dict[int, float]  # batch size -> smallest row cosine torch vs ORT


def manifest_path_for(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.json`` (the manifest lies beside the model)."""
    return Path(onnx_path).with_suffix(".json")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    # The exporter logs one warning per torchvision op it cannot register; torchvision is
    # deliberately absent, so these lines are noise; so are torch.export's own deprecation notes.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(axis=1) / np.maximum(denom, 1e-30)


def _check_graph(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    inputs = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise ContractError(
            f"{path}: inputs are {[i.name for i in inputs]}, expected [{INPUT_NAME!r}]"
        )
    outputs = [o.name for o in model.graph.output]
    if outputs != [OUTPUT_NAME]:
        raise ContractError(f"{path}: outputs are {outputs}, expected [{OUTPUT_NAME!r}]")
    for value in (inputs[0], model.graph.output[0]):
        batch = value.type.tensor_type.shape.dim[0]
        if batch.HasField("dim_value") or not batch.dim_param:
            raise ContractError(f"{path}: {value.name!r} has a fixed batch dimension")


def export_backbone(
    model: IResNet,
    path: str | Path,
    *,
    model_id: str,
    parity_batches: Sequence[int] = PARITY_BATCHES,
    seed: int = 0,
    exporter: Exporter = "dynamo",
) -> BackboneExportReport:
    """Write ``path`` (.onnx) and its manifest (.json) and validate both; returns the report.

    Nothing is left behind when a check fails: a half-validated model is never on disk under
    its final name.
    """
    onnx_path = Path(path)
    if onnx_path.suffix != ".onnx":
        raise InvalidInput(f"backbone output must end in .onnx, got {onnx_path.name}")
    if not parity_batches:
        raise InvalidInput("at least one parity batch size is needed")
    if exporter not in EXPORTERS:
        raise InvalidInput(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    manifest_path = manifest_path_for(onnx_path)
    tmp_data: Path | None = None  # external data the exporter may write beside the temp file
    try:
        with atomic_path(onnx_path) as tmp:
            tmp_data = Path(f"{tmp}.data")
            _write_onnx(model, tmp, exporter=exporter)
            _check_graph(tmp)
            parity = _parity(model, tmp, batches=parity_batches, seed=seed)
        digest = file_sha256(onnx_path)
        manifest = backbone_manifest(
            model_id=model_id,
            file=onnx_path.name,
            input_size=model.input_size,
            output_dim=model.embedding_dim,
        )
        body = manifest.model_dump(mode="json")
        # Extra keys beyond the contract; the manifest loader ignores them.
        body["sha256"] = digest
        body["arch"] = model.arch
        manifest_path.write_text(json.dumps(body, indent=2) + "\n")
        # The service's own loader must accept what we wrote (names, shapes, a probe image).
        from service.inference.backbone import OnnxBackbone

        OnnxBackbone(manifest_path)
    except BaseException:
        for leftover in (tmp_data, onnx_path, manifest_path):
            if leftover is not None:
                leftover.unlink(missing_ok=True)
        raise
    return BackboneExportReport(
        onnx_path=onnx_path,
        manifest_path=manifest_path,
        manifest=manifest,
        sha256=digest,
        size_bytes=onnx_path.stat().st_size,
        parity=parity,
    )


def _write_onnx(model: IResNet, path: Path, *, exporter: Exporter) -> None:
    size = model.input_size
    example = torch.zeros(2, 3, size, size)
    common = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": OPSET}
    if exporter == "dynamo":
        # dynamic_shapes is keyed by IResNet.forward's argument name.
        dynamic = {"dynamic_shapes": {"x": {0: torch.export.Dim("batch", min=1)}}}
        dynamic |= {"external_data": False, "verbose": False}
    else:
        # The TorchScript exporter: deprecated, but ~4x faster on an r18 (demo set-up).
        dynamic = {"dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}}
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            model, (example,), str(path), dynamo=exporter == "dynamo", **common, **dynamic
        )
    if Path(str(path) + ".data").exists():
        raise ContractError(f"{path}: the exporter wrote external data; expected a single file")


def _parity(
    model: IResNet, onnx_path: Path, *, batches: Sequence[int], seed: int
) -> dict[int, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(
        str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(seed)
    parity: dict[int, float] = {}
    for batch in batches:
        # Inputs in the normalised pixel range [-1, 1].
        x = rng.uniform(-1.0, 1.0, size=(batch, 3, model.input_size, model.input_size))
        x = x.astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
        if got.shape != expected.shape:
            raise ContractError(f"{onnx_path}: ORT output {got.shape} != torch {expected.shape}")
        worst = float(_row_cosines(expected, got).min())
        parity[batch] = worst
        if not worst >= MIN_COSINE:
            raise ContractError(
                f"{onnx_path}: torch vs ONNX Runtime cosine {worst:.6f} < {MIN_COSINE} "
                f"at batch {batch}"
            )
    return parity


def export_random_backbone(
    path: str | Path,
    *,
    arch: str = "r18",
    seed: int = 0,
    config: TrainConfig | None = None,
    model_id: str | None = None,
    parity_batches: Sequence[int] = PARITY_BATCHES,
    exporter: Exporter = "dynamo",
) -> BackboneExportReport:
    """A randomly initialised backbone (seeded), exported with its manifest.

    For demos and tests without trained weights: its embeddings are a fixed random function
    of the image, far from a face recogniser, but every contract holds.
    """
    cfg = config or TrainConfig(arch=arch)  # type: ignore[arg-type]
    torch.manual_seed(seed)
    model = backbone_from_config(cfg)
    return export_backbone(
        model,
        path,
        model_id=model_id or f"iresnet-{cfg.arch}-random-seed{seed}",
        parity_batches=parity_batches,
        seed=seed,
        exporter=exporter,
    )
