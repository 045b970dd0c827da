"""The transformer runner: one ONNX mapping network, new-model space -> old-model space.

Torch-free (onnx + onnxruntime). Loading validates the artefact contract (docs/ARCHITECTURE.md,
"Contracts" 2); anything that breaks it raises :class:`ContractError` with one clear line.
``map`` is THE place where the mapped side is L2-normalised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.contracts import TRANSFORMER_INPUT, TRANSFORMER_OUTPUT, TransformerMetadata
from service.errors import ContractError
from service.vectors import as_float32_matrix, l2_normalize


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _static_dim(value: object) -> int | None:
    """An ONNX/ORT shape entry as an int, or None when symbolic/unknown."""
    return value if isinstance(value, int) and value > 0 else None


class TransformerSession:
    """A validated ONNX transformer ready to map new-model embeddings into the old space.

    Thread-safe for concurrent ``map`` calls (one ORT session serves many threads).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 1,
    ) -> None:
        import onnx
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ContractError(f"transformer file not found: {self.path}")
        source = f"transformer {self.path.name}"
        data = self.path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()

        try:
            model = onnx.load_model_from_string(data)
            onnx.checker.check_model(model)
        except Exception as exc:  # protobuf/onnx raise many kinds for garbage bytes
            raise ContractError(f"{source}: not a valid ONNX model ({type(exc).__name__})") from exc
        props = {p.key: p.value for p in model.metadata_props}
        self.metadata: TransformerMetadata = TransformerMetadata.from_props(props, source=source)

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_threads)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                data, sess_options=options, providers=list(providers)
            )
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise ContractError(f"{source}: ONNX Runtime cannot load it ({reason})") from exc
        self.providers: list[str] = list(self._session.get_providers())

        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or inputs[0].name != TRANSFORMER_INPUT:
            names = [i.name for i in inputs]
            raise ContractError(
                f"{source}: expected one input named {TRANSFORMER_INPUT!r}, got {names}"
            )
        if len(outputs) < 1 or outputs[0].name != TRANSFORMER_OUTPUT:
            names = [o.name for o in outputs]
            raise ContractError(
                f"{source}: expected output named {TRANSFORMER_OUTPUT!r}, got {names}"
            )
        for what, arg in (("input", inputs[0]), ("output", outputs[0])):
            if arg.type != "tensor(float)":
                raise ContractError(
                    f"{source}: {what} {arg.name!r} must be float32, got {arg.type}"
                )
            if len(arg.shape) != 2:
                raise ContractError(
                    f"{source}: {what} {arg.name!r} must be 2-D [batch, d], got {arg.shape}"
                )
            if _static_dim(arg.shape[0]) is not None:
                raise ContractError(
                    f"{source}: {what} {arg.name!r} needs a dynamic batch dimension, "
                    f"got {arg.shape}"
                )
        graph_in = _static_dim(inputs[0].shape[1])
        graph_out = _static_dim(outputs[0].shape[1])
        if graph_in is None or graph_out is None:
            shapes = f"{inputs[0].shape} -> {outputs[0].shape}"
            raise ContractError(f"{source}: embedding dimensions must be static, got {shapes}")
        if (graph_in, graph_out) != (self.metadata.input_dim, self.metadata.output_dim):
            raise ContractError(
                f"{source}: metadata says {self.metadata.input_dim} -> {self.metadata.output_dim} "
                f"but the graph maps {graph_in} -> {graph_out}"
            )
        self.input_dim: int = graph_in
        self.output_dim: int = graph_out

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"TransformerSession({self.path.name!r}, {m.source_model} {self.input_dim} -> "
            f"{m.target_model} {self.output_dim}, recipe={m.recipe!r}, sha256={self.sha256[:12]})"
        )

    def map_raw(self, new: np.ndarray) -> np.ndarray:
        """The network's output as is (not normalised). For parity checks; prefer ``map``."""
        x = as_float32_matrix(new, dim=self.input_dim, name=TRANSFORMER_INPUT)
        if x.shape[0] == 0:
            return np.zeros((0, self.output_dim), dtype=np.float32)
        (out,) = self._session.run([TRANSFORMER_OUTPUT], {TRANSFORMER_INPUT: x})
        return np.asarray(out, dtype=np.float32)

    def map(self, new: np.ndarray) -> np.ndarray:
        """Map new-model embeddings [n, d_new] to L2-normalised old-space vectors [n, d_old]."""
        return l2_normalize(self.map_raw(new))
