"""The transformer runner: one ONNX mapping network, new-model space -> old-model space.

Torch-free (onnx + onnxruntime). Loading validates the artefact contract (docs/ARCHITECTURE.md,
"Contracts" 2); anything that breaks it raises :class:`ContractError` with one clear line.

A one-way file has the input ``new_embedding`` and the output ``old_embedding`` (the forward map
``f``). A two-way file also has the input ``gallery_old_embedding`` and the output
``gallery_new_embedding`` (the backward map ``h``: old -> new, for fused scoring, see
:mod:`service.fusion`), both with their own dynamic batch dimension, and metadata
``facebridge.fusion_weight`` < 1. A caller that needs one head feeds a zero-row array to the
other input. ``map`` is THE place where the mapped query side is L2-normalised and
``map_gallery`` THE place where the backward-mapped gallery side is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.contracts import (
    META_FUSION_WEIGHT,
    TRANSFORMER_GALLERY_INPUT,
    TRANSFORMER_GALLERY_OUTPUT,
    TRANSFORMER_INPUT,
    TRANSFORMER_OUTPUT,
    TransformerMetadata,
)
from service.errors import ContractError, ServiceUnavailable
from service.vectors import as_float32_matrix, l2_normalize


class NonFiniteOutput(ServiceUnavailable):
    """The transformer returned NaN/inf for a real query: this version cannot answer it (503;
    counted in ``facebridge_transformer_nonfinite_total``)."""

    code, title = "transformer-nonfinite", "Transformer output is not finite"


def counting_nonfinite(
    run: Callable[[np.ndarray], np.ndarray], *, version: str, count: Callable[[], object]
) -> Callable[[np.ndarray], np.ndarray]:
    """``run`` (a transformer head) whose :class:`NonFiniteOutput` names ``version`` and calls
    ``count()`` first (the service counts them per version in its metrics)."""

    def checked(vectors: np.ndarray) -> np.ndarray:
        try:
            return run(vectors)
        except NonFiniteOutput as exc:
            count()
            raise NonFiniteOutput(f"transformer {version}: {exc.detail}") from exc

    return checked


def _finite(out: np.ndarray, *, head: str) -> np.ndarray:
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise NonFiniteOutput(
            f"the {head} returned NaN/inf for {int(bad.sum())} of {len(out)} vectors; roll back "
            "or activate another version (POST /v1/admin/transformers/rollback)"
        )
    return out


def read_metadata(path: str | Path) -> TransformerMetadata:
    """A transformer file's facebridge metadata alone (no ONNX Runtime session), e.g. the
    calibration of a shadow candidate; ContractError when unreadable."""
    import onnx

    p = Path(path)
    try:
        model = onnx.load_model_from_string(p.read_bytes())
    except Exception as exc:  # missing file, protobuf errors
        raise ContractError(f"transformer {p.name}: cannot read ({type(exc).__name__})") from exc
    props = {prop.key: prop.value for prop in model.metadata_props}
    return TransformerMetadata.from_props(props, source=f"transformer {p.name}")


def _static_dim(value: object) -> int | None:
    """An ONNX/ORT shape entry as an int, or None when symbolic/unknown."""
    return value if isinstance(value, int) and value > 0 else None


def _check_backward_map(
    source: str, *, inputs: dict[str, Any], outputs: dict[str, Any], meta: TransformerMetadata
) -> None:
    """A two-way graph's backward map: old-space gallery vectors to new space, with a batch
    dimension of its own."""
    g_in, g_out = inputs[TRANSFORMER_GALLERY_INPUT], outputs[TRANSFORMER_GALLERY_OUTPUT]
    back = (_static_dim(g_in.shape[1]), _static_dim(g_out.shape[1]))
    if back != (meta.output_dim, meta.input_dim):
        raise ContractError(
            f"{source}: the backward map must take {TRANSFORMER_GALLERY_INPUT!r} "
            f"[g, {meta.output_dim}] to {TRANSFORMER_GALLERY_OUTPUT!r} "
            f"[g, {meta.input_dim}], got {g_in.shape} -> {g_out.shape}"
        )
    batch, gallery_batch = inputs[TRANSFORMER_INPUT].shape[0], g_in.shape[0]
    if isinstance(batch, str) and batch and batch == gallery_batch:
        raise ContractError(
            f"{source}: {TRANSFORMER_INPUT!r} and {TRANSFORMER_GALLERY_INPUT!r} share the "
            f"batch dimension {batch!r}; their batch dimensions must be independent"
        )


def _check_tensor(source: str, what: str, arg: Any) -> None:
    """float32, 2-D, dynamic batch (one ContractError line otherwise)."""
    if arg.type != "tensor(float)":
        raise ContractError(f"{source}: {what} {arg.name!r} must be float32, got {arg.type}")
    if len(arg.shape) != 2:
        raise ContractError(
            f"{source}: {what} {arg.name!r} must be 2-D [batch, d], got {arg.shape}"
        )
    if _static_dim(arg.shape[0]) is not None:
        raise ContractError(
            f"{source}: {what} {arg.name!r} needs a dynamic batch dimension, got {arg.shape}"
        )


class TransformerRunner:
    """A validated ONNX transformer ready to map new-model embeddings into the old space.

    Thread-safe for concurrent ``map``/``map_gallery`` calls (one ORT session serves many
    threads).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 1,
        name: str | None = None,
    ) -> None:
        import onnx
        import onnxruntime as ort

        self.path = Path(path)
        try:  # one read, no is_file() first: the file may be deleted in between
            data = self.path.read_bytes()
        except OSError as exc:
            raise ContractError(f"transformer file not found: {self.path}") from exc
        # Messages name the file as its owner knows it (an upload's temp file means nothing).
        source = f"transformer {name or self.path.name}"
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
        self._two_way = self._validate_graph(source)
        self.input_dim: int = self.metadata.input_dim
        self.output_dim: int = self.metadata.output_dim

    def _validate_graph(self, source: str) -> bool:
        """Names, types, ranks, batch and static dims of the graph vs the metadata.

        Returns True for a two-way graph.
        """
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        in_names, out_names = list(inputs), list(outputs)
        two_way_inputs = [TRANSFORMER_INPUT, TRANSFORMER_GALLERY_INPUT]
        if in_names not in ([TRANSFORMER_INPUT], two_way_inputs, two_way_inputs[::-1]):
            raise ContractError(
                f"{source}: expected one input named {TRANSFORMER_INPUT!r} (plus "
                f"{TRANSFORMER_GALLERY_INPUT!r} for a two-way transformer), got {in_names}"
            )
        if TRANSFORMER_OUTPUT not in outputs:
            raise ContractError(
                f"{source}: expected output named {TRANSFORMER_OUTPUT!r}, got {out_names}"
            )
        has_gallery_in = TRANSFORMER_GALLERY_INPUT in inputs
        has_gallery_out = TRANSFORMER_GALLERY_OUTPUT in outputs
        if has_gallery_in != has_gallery_out:
            have, lack = (
                (f"input {TRANSFORMER_GALLERY_INPUT!r}", f"output {TRANSFORMER_GALLERY_OUTPUT!r}")
                if has_gallery_in
                else (
                    f"output {TRANSFORMER_GALLERY_OUTPUT!r}",
                    f"input {TRANSFORMER_GALLERY_INPUT!r}",
                )
            )
            raise ContractError(
                f"{source}: a two-way transformer needs both gallery tensors; it has the "
                f"{have} but not the {lack}"
            )
        two_way = has_gallery_in
        checked = [("input", inputs[TRANSFORMER_INPUT]), ("output", outputs[TRANSFORMER_OUTPUT])]
        if two_way:
            checked += [
                ("input", inputs[TRANSFORMER_GALLERY_INPUT]),
                ("output", outputs[TRANSFORMER_GALLERY_OUTPUT]),
            ]
        for what, arg in checked:
            _check_tensor(source, what, arg)

        graph_in = _static_dim(inputs[TRANSFORMER_INPUT].shape[1])
        graph_out = _static_dim(outputs[TRANSFORMER_OUTPUT].shape[1])
        if graph_in is None or graph_out is None:
            shapes = f"{inputs[TRANSFORMER_INPUT].shape} -> {outputs[TRANSFORMER_OUTPUT].shape}"
            raise ContractError(f"{source}: embedding dimensions must be static, got {shapes}")
        meta = self.metadata
        if (graph_in, graph_out) != (meta.input_dim, meta.output_dim):
            raise ContractError(
                f"{source}: metadata says {meta.input_dim} -> {meta.output_dim} "
                f"but the graph maps {graph_in} -> {graph_out}"
            )
        if two_way:
            _check_backward_map(source, inputs=inputs, outputs=outputs, meta=meta)
        if two_way != meta.two_way:
            weight = (
                f"{META_FUSION_WEIGHT} = {meta.fusion_weight}"
                if meta.two_way
                else f"no {META_FUSION_WEIGHT} < 1"
            )
            graph = "two-way (forward and backward map)" if two_way else "one-way (forward only)"
            raise ContractError(
                f"{source}: the graph is {graph} but the metadata has {weight}; a two-way file "
                f"needs both gallery tensors and a fusion weight < 1, a one-way file neither"
            )
        return two_way

    def __repr__(self) -> str:
        m = self.metadata
        way = f", two-way w={m.fusion_weight}" if self.two_way else ""
        return (
            f"TransformerRunner({self.path.name!r}, {m.source_model} {self.input_dim} -> "
            f"{m.target_model} {self.output_dim}, recipe={m.recipe!r}{way}, "
            f"sha256={self.sha256[:12]})"
        )

    @property
    def two_way(self) -> bool:
        """True when the file carries the backward map (fused scoring, service.fusion)."""
        return self._two_way

    @property
    def fusion_weight(self) -> float:
        """Weight of the old-space score in the fused score; 1.0 for a one-way file."""
        return float(self.metadata.fusion_weight)

    def _run(self, output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        (out,) = self._session.run([output], feeds)
        return np.asarray(out, dtype=np.float32)

    def map_raw(self, new: np.ndarray) -> np.ndarray:
        """The forward network's output as is (not normalised). For parity checks; prefer
        ``map``."""
        x = as_float32_matrix(new, dim=self.input_dim, name=TRANSFORMER_INPUT)
        if x.shape[0] == 0:
            return np.zeros((0, self.output_dim), dtype=np.float32)
        feeds = {TRANSFORMER_INPUT: x}
        if self._two_way:
            feeds[TRANSFORMER_GALLERY_INPUT] = np.zeros((0, self.output_dim), np.float32)
        return self._run(TRANSFORMER_OUTPUT, feeds)

    def map(self, new: np.ndarray) -> np.ndarray:
        """Map new-model embeddings [n, d_new] to L2-normalised old-space vectors [n, d_old].
        :class:`NonFiniteOutput` when a row comes out NaN/inf."""
        return l2_normalize(_finite(self.map_raw(new), head="forward map"))

    def map_gallery_raw(self, old: np.ndarray) -> np.ndarray:
        """The backward network's output as is (not normalised); two-way files only."""
        if not self._two_way:
            raise ContractError(
                f"transformer {self.path.name} is one-way: it has no {TRANSFORMER_GALLERY_OUTPUT!r}"
            )
        g = as_float32_matrix(old, dim=self.output_dim, name=TRANSFORMER_GALLERY_INPUT)
        if g.shape[0] == 0:
            return np.zeros((0, self.input_dim), dtype=np.float32)
        feeds = {
            TRANSFORMER_INPUT: np.zeros((0, self.input_dim), np.float32),
            TRANSFORMER_GALLERY_INPUT: g,
        }
        return self._run(TRANSFORMER_GALLERY_OUTPUT, feeds)

    def map_gallery(self, old: np.ndarray) -> np.ndarray:
        """Map old-model gallery vectors [m, d_old] to L2-normalised new-space vectors
        [m, d_new] (the backward map ``h`` of fused scoring). NonFiniteOutput for NaN/inf."""
        return l2_normalize(_finite(self.map_gallery_raw(old), head="backward (gallery) map"))
