"""Any ONNX face-embedding backbone described by a manifest, run by ONNX Runtime.

The manifest (service.contracts.BackboneManifest) says how to feed the model; on load the model is
checked against it (input/output names, layout and size, output dim) and a probe image is run
(output shape, finite values, unit norm when the manifest says normalised). Any mismatch is one
:class:`ContractError` line. The output is L2-normalised here: the new side's one place
(flip-averaged queries go through :func:`service.vectors.flip_average`, which normalises).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.contracts import BackboneManifest, load_backbone_manifest
from service.errors import ContractError, ImageError, ServiceUnavailable
from service.inference.preprocess import preprocess
from service.vectors import flip_average as average_flips
from service.vectors import l2_normalize


def probe_crops(n: int = 2, *, size: int = 112) -> np.ndarray:
    """Deterministic face-sized test crops (smooth gradients) to exercise a model on load."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    crops = []
    for k in range(n):
        r = 255 * xx
        g = 255 * yy
        b = 255 * (0.5 + 0.5 * np.sin(6.0 * (xx + yy) + k))
        crops.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(crops), 0, 255).astype(np.uint8)


def mirror_crops(aligned: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] crops mirrored left-right (along the width axis), C-contiguous."""
    return np.ascontiguousarray(np.asarray(aligned)[:, :, ::-1, :])


def _expected_input_shape(manifest: BackboneManifest) -> tuple[int, int, int]:
    height, width = manifest.input_size
    return (3, height, width) if manifest.layout == "NCHW" else (height, width, 3)


class OnnxBackbone:
    """An ONNX backbone + its manifest. ``embed`` maps aligned crops to unit vectors.

    One instance serves many threads concurrently (ORT sessions are thread-safe).
    """

    def __init__(
        self,
        manifest_path: str | Path,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        batch_size: int = 64,
    ) -> None:
        import onnxruntime as ort

        self.manifest, self.onnx_path = load_backbone_manifest(manifest_path)
        self.manifest_path = Path(manifest_path)
        self.batch_size = max(1, int(batch_size))
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(intra_op_threads))
        options.inter_op_num_threads = max(1, int(inter_op_threads))
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Servers run several sessions side by side: no busy-waiting threads between requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(self.onnx_path), sess_options=options, providers=list(providers)
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ContractError(
                f"{self.onnx_path}: ONNX Runtime cannot load the backbone ({exc})"
            ) from exc
        active = self._session.get_providers()
        wanted = list(providers)
        # ORT silently falls back (e.g. CUDA asked, CPU runs): callers compare ``providers`` with
        # what they asked for (the service refuses when CUDA is required). Nothing asked = error.
        if wanted and not set(wanted) & set(active):
            raise ContractError(
                f"backbone asked for providers {wanted} but ONNX Runtime runs {active}"
            )
        self.providers = tuple(active)
        self._validate()

    # -- public ------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def output_dim(self) -> int:
        return self.manifest.output_dim

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.manifest.input_size)  # type: ignore[return-value]

    def embed(self, aligned: np.ndarray, *, flip_average: bool = False) -> np.ndarray:
        """[N, 112, 112, 3] uint8 RGB aligned crops -> [N, d] L2-normalised float32.

        ``flip_average``: each crop and its mirror image (left-right, :func:`mirror_crops`) run
        in the SAME ORT call, ``max(1, batch_size // 2)`` images (twice as many crops) per call:
        one call per image on CPU (batch_size 1), where batch 2 costs per image about what
        batch 1 does and larger batches cost more. Returns :func:`service.vectors.flip_average`
        of the two halves.
        """
        batch = np.asarray(aligned)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ImageError(f"embed expects [N, H, W, 3] uint8 crops, got shape {batch.shape}")
        if batch.shape[0] == 0:
            return np.empty((0, self.output_dim), dtype=np.float32)
        if not flip_average:
            return l2_normalize(self.embed_raw(batch))
        step = max(1, self.batch_size // 2)
        plain, flipped = [], []
        for i in range(0, batch.shape[0], step):
            chunk = batch[i : i + step]
            both = np.concatenate([chunk, mirror_crops(chunk)], axis=0)
            raw = self.run_tensor(preprocess(both, manifest=self.manifest))
            plain.append(raw[: chunk.shape[0]])
            flipped.append(raw[chunk.shape[0] :])
        return average_flips(np.concatenate(plain), np.concatenate(flipped))

    def embed_raw(self, aligned: np.ndarray) -> np.ndarray:
        """The model's own output for [N, H, W, 3] uint8 crops, before normalisation."""
        outputs = [
            self.run_tensor(preprocess(aligned[i : i + self.batch_size], manifest=self.manifest))
            for i in range(0, aligned.shape[0], self.batch_size)
        ]
        return np.concatenate(outputs, axis=0)

    def run_tensor(self, tensor: np.ndarray) -> np.ndarray:
        """One ORT run on an already preprocessed float32 tensor (used by benchmarks too)."""
        (out,) = self._session.run([self.manifest.output_name], {self.manifest.input_name: tensor})
        return np.asarray(out, dtype=np.float32).reshape(tensor.shape[0], -1)

    # -- validation --------------------------------------------------------------------------
    def _validate(self) -> None:
        m, where = self.manifest, str(self.manifest_path)
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        if m.input_name not in inputs:
            raise ContractError(
                f"{where}: input_name {m.input_name!r} is not an input of the model "
                f"(inputs: {sorted(inputs)})"
            )
        if m.output_name not in outputs:
            raise ContractError(
                f"{where}: output_name {m.output_name!r} is not an output of the model "
                f"(outputs: {sorted(outputs)})"
            )
        if len(inputs) != 1:
            raise ContractError(f"{where}: the model has {len(inputs)} inputs; a backbone has one")
        shape = list(inputs[m.input_name].shape)
        if len(shape) != 4:
            raise ContractError(
                f"{where}: model input has rank {len(shape)}; expected 4 ({m.layout})"
            )
        expected = _expected_input_shape(m)
        for axis, (got, want) in enumerate(zip(shape[1:], expected, strict=True), start=1):
            if isinstance(got, int) and got != want:
                raise ContractError(
                    f"{where}: manifest says {m.layout} input {list(expected)} but the model's "
                    f"input is {shape} (axis {axis}: {got} != {want}); check layout/input_size"
                )
        out_shape = list(outputs[m.output_name].shape)
        if out_shape and isinstance(out_shape[-1], int) and out_shape[-1] != m.output_dim:
            raise ContractError(
                f"{where}: manifest output_dim {m.output_dim} but the model outputs {out_shape}"
            )
        probe = probe_crops(2, size=m.input_size[0])
        try:
            raw = self.embed_raw(probe)
        except ContractError:
            raise
        except Exception as exc:
            raise ContractError(f"{where}: the probe image failed to run: {exc}") from exc
        if raw.shape != (2, m.output_dim):
            raise ContractError(
                f"{where}: probe output has shape {list(raw.shape)}; expected [2, {m.output_dim}]"
            )
        if not np.isfinite(raw).all():
            raise ContractError(f"{where}: probe output has NaN/inf values")
        norms = np.linalg.norm(raw, axis=1)
        if (norms == 0).any():
            raise ContractError(f"{where}: probe output is an all-zero vector")
        if m.output_normalized and not np.allclose(norms, 1.0, atol=1e-2):
            raise ContractError(
                f"{where}: manifest says output_normalized but probe norms are {norms.round(4)}"
            )


class NoBackbone:
    """Stands in when no backbone is configured: every image route answers 503."""

    model_id = "none"
    output_dim = 0

    def embed(self, aligned: np.ndarray, *, flip_average: bool = False) -> np.ndarray:
        raise ServiceUnavailable("no backbone configured: set FACEBRIDGE_BACKBONE_MANIFEST")
