"""Artefact contracts shared by the offline (training) and online (service) sides.

Pure Python + NumPy: no torch, no ONNX Runtime. See docs/ARCHITECTURE.md, "Contracts".

1. Pairs file: ``.npz`` (or a directory of ``.npy``) with ``old`` [N, d_old], ``new`` [N, d_new],
   ``label`` [N] and optional ``name``, ``path``, ``split``, ``new_flip`` [N, d_new] (the new
   model's embedding of the horizontally mirrored image), ...
2. Transformer artefact: one ONNX file, input ``new_embedding``, output ``old_embedding``,
   ``metadata_props`` keyed by ``META_*`` below. A *two-way* transformer also has the input
   ``gallery_old_embedding`` and the output ``gallery_new_embedding`` (old -> new, the backward
   map) and ``facebridge.fusion_weight`` < 1: see :mod:`service.fusion`. ``facebridge.calibration``
   (optional) holds the open-set calibration of the file's score (:mod:`service.decision`).
3. Backbone manifest: JSON beside a backbone ONNX, :class:`BackboneManifest`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service import decision
from service import metadata_fields as fields
from service.errors import ContractError

# ---------------------------------------------------------------------------------------------
# 1. Pairs file
# ---------------------------------------------------------------------------------------------
PAIRS_REQUIRED = ("old", "new", "label")
PAIRS_OPTIONAL_STRINGS = ("name", "path", "split")
# Optional vectors row-aligned with ``new`` (same shape [N, d_new]): the new model's embedding of
# the horizontally mirrored image, normalised as ``new`` is. Used for flip-averaged queries
# (service.vectors.flip_average).
PAIRS_NEW_FLIP = "new_flip"
SPLIT_BRIDGE = "bridge"
SPLIT_EVAL = "eval"


@dataclass(frozen=True)
class PairsSet:
    """Row i is one image seen by both models. Vectors are float32 as stored (not normalised).

    ``new_flip`` (optional, [N, d_new] float32, row-aligned with ``new``): the new model's
    embedding of the horizontally mirrored image of row i (the same aligned crop, mirrored),
    stored like ``new`` (the raw unit embedding, NOT the flip average): flip-averaged queries are
    ``service.vectors.flip_average(new, new_flip)``. Written by ``facebridge pairs extract``
    (default) and ``facebridge pairs add-flip``.
    ``extra`` holds any other per-row arrays of the file (e.g. ``landmarks5``, ``detected``).
    """

    old: np.ndarray
    new: np.ndarray
    label: np.ndarray
    name: np.ndarray | None = None
    path: np.ndarray | None = None
    split: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    new_flip: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def old_dim(self) -> int:
        return int(self.old.shape[1])

    @property
    def new_dim(self) -> int:
        return int(self.new.shape[1])

    def take(self, rows: np.ndarray) -> PairsSet:
        """The subset at ``rows`` (indices or boolean mask), materialised in memory."""
        rows = np.asarray(rows)

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.asarray(a[rows])

        return replace(
            self,
            old=np.ascontiguousarray(self.old[rows], dtype=np.float32),
            new=np.ascontiguousarray(self.new[rows], dtype=np.float32),
            label=np.asarray(self.label[rows]),
            name=pick(self.name),
            path=pick(self.path),
            split=pick(self.split),
            extra={k: np.asarray(v[rows]) for k, v in self.extra.items()},
            new_flip=None
            if self.new_flip is None
            else np.ascontiguousarray(self.new_flip[rows], dtype=np.float32),
        )

    def select_split(self, split: str | None) -> PairsSet:
        """Rows whose ``split`` equals ``split``; all rows when ``split`` is None or absent."""
        if split is None or self.split is None:
            return self
        mask = self.split == split
        if not mask.any():
            raise ContractError(f"pairs file has no rows with split == {split!r}")
        return self.take(np.flatnonzero(mask))


def _check_pairs(arrays: dict[str, np.ndarray], source: str) -> None:
    missing = [k for k in PAIRS_REQUIRED if k not in arrays]
    if missing:
        raise ContractError(f"{source}: missing required array(s) {', '.join(missing)}")
    old, new, label = arrays["old"], arrays["new"], arrays["label"]
    for key, arr in (("old", old), ("new", new)):
        if arr.ndim != 2:
            raise ContractError(f"{source}: '{key}' must be 2-D [N, d], got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ContractError(f"{source}: '{key}' must be floating point, got {arr.dtype}")
        if arr.shape[1] == 0:
            raise ContractError(f"{source}: '{key}' has dimension 0")
    if label.ndim != 1 or not np.issubdtype(label.dtype, np.integer):
        raise ContractError(
            f"{source}: 'label' must be a 1-D integer array, got {label.dtype} {label.shape}"
        )
    n = label.shape[0]
    if n == 0:
        raise ContractError(f"{source}: no rows")
    for key, arr in arrays.items():
        if arr.ndim >= 1 and arr.shape[0] != n:
            raise ContractError(f"{source}: '{key}' has {arr.shape[0]} rows but 'label' has {n}")
    if PAIRS_NEW_FLIP in arrays:
        flip = arrays[PAIRS_NEW_FLIP]
        if flip.shape != new.shape or not np.issubdtype(flip.dtype, np.floating):
            raise ContractError(
                f"{source}: '{PAIRS_NEW_FLIP}' must be a floating-point array shaped like 'new' "
                f"{new.shape}, got {flip.dtype} {flip.shape}"
            )
    for key in ("old", "new", PAIRS_NEW_FLIP):
        if key not in arrays:
            continue
        # float32 is what every consumer uses: a float64 value beyond its range is not finite.
        with np.errstate(over="ignore"):
            bad = ~np.isfinite(np.asarray(arrays[key], dtype=np.float32)).all(axis=1)
        if bad.any():
            raise ContractError(
                f"{source}: '{key}' has NaN/inf in {int(bad.sum())} row(s), "
                f"first at row {int(np.flatnonzero(bad)[0])}"
            )
    if "split" in arrays:
        allowed = {SPLIT_BRIDGE, SPLIT_EVAL}
        unknown = set(np.unique(arrays["split"]).tolist()) - allowed
        if unknown:
            raise ContractError(
                f"{source}: 'split' has unknown value(s) {sorted(unknown)}; allowed: bridge, eval"
            )


def load_pairs(path: str | Path, *, mmap: bool = True) -> PairsSet:
    """Load and validate a pairs file: ``.npz``, or a directory of ``.npy`` (memory-mapped).

    Raises :class:`ContractError` with one clear line when the file breaks the contract.
    """
    p = Path(path)
    if not p.exists():
        raise ContractError(f"pairs file not found: {p}")
    arrays: dict[str, np.ndarray] = {}
    try:
        if p.is_dir():
            files = sorted(p.glob("*.npy"))
            if not files:
                raise ContractError(f"{p}: directory holds no .npy files")
            for f in files:
                arrays[f.stem] = np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
        else:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except ContractError:
        raise
    except Exception as exc:  # numpy raises many kinds for a corrupt file
        raise ContractError(
            f"{p}: not a readable pairs file ({type(exc).__name__}: {exc})"
        ) from exc
    _check_pairs(arrays, str(p))
    vector_keys = (*PAIRS_REQUIRED, *PAIRS_OPTIONAL_STRINGS, PAIRS_NEW_FLIP)
    named = {k: arrays.pop(k) for k in vector_keys if k in arrays}
    keep_mapped = mmap and p.is_dir()

    def vectors(key: str) -> np.ndarray:
        """float32 vectors; a memory-mapped float32 .npy stays mapped (never read in full)."""
        arr = named[key]
        if keep_mapped and arr.dtype == np.float32:
            return arr
        return np.asarray(arr, dtype=np.float32)

    return PairsSet(
        old=vectors("old"),
        new=vectors("new"),
        label=np.asarray(named["label"]).astype(np.int64),
        name=None if "name" not in named else np.asarray(named["name"]).astype(str),
        path=None if "path" not in named else np.asarray(named["path"]).astype(str),
        split=None if "split" not in named else np.asarray(named["split"]).astype(str),
        extra=arrays,
        new_flip=vectors(PAIRS_NEW_FLIP) if PAIRS_NEW_FLIP in named else None,
    )


def save_pairs(path: str | Path, pairs: PairsSet) -> Path:
    """Write ``pairs`` as ``.npz`` (a path ending in .npz) or as a directory of ``.npy``."""
    p = Path(path)
    arrays: dict[str, np.ndarray] = {
        "old": np.asarray(pairs.old, dtype=np.float32),
        "new": np.asarray(pairs.new, dtype=np.float32),
        "label": np.asarray(pairs.label, dtype=np.int64),
    }
    for key in PAIRS_OPTIONAL_STRINGS:
        value = getattr(pairs, key)
        if value is not None:
            arrays[key] = np.asarray(value).astype(str)
    if pairs.new_flip is not None:
        arrays[PAIRS_NEW_FLIP] = np.asarray(pairs.new_flip, dtype=np.float32)
    arrays.update(pairs.extra)
    _check_pairs(arrays, str(p))
    if p.suffix == ".npz":
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(p)
    else:
        p.mkdir(parents=True, exist_ok=True)
        for key, arr in arrays.items():
            np.save(p / f"{key}.npy", arr, allow_pickle=False)
    return p


# ---------------------------------------------------------------------------------------------
# 2. Transformer artefact
# ---------------------------------------------------------------------------------------------
TRANSFORMER_INPUT = "new_embedding"
TRANSFORMER_OUTPUT = "old_embedding"
# Two-way transformers only (optional): the backward map old -> new, applied to gallery vectors.
TRANSFORMER_GALLERY_INPUT = "gallery_old_embedding"
TRANSFORMER_GALLERY_OUTPUT = "gallery_new_embedding"
FORMAT_VERSION = "1"
META_PREFIX = "facebridge."
META_FORMAT_VERSION = "facebridge.format_version"
META_INPUT_DIM = "facebridge.input_dim"
META_OUTPUT_DIM = "facebridge.output_dim"
META_SOURCE_MODEL = "facebridge.source_model"  # the new backbone's model id
META_TARGET_MODEL = "facebridge.target_model"  # the old model's id
META_RECIPE = "facebridge.recipe"
META_CREATED_AT = "facebridge.created_at"
META_THRESHOLD = "facebridge.threshold"  # recommended decision threshold (cosine), optional
META_METRICS = "facebridge.metrics"  # JSON object of evaluation metrics, optional
# weight of the old-space score in the fused score (service.fusion); absent = 1 = forward only
META_FUSION_WEIGHT = "facebridge.fusion_weight"
# JSON list of open-set calibrations (service.decision.ScoreCalibration), each naming its
# score_kind, space and queries; optional (older files: the 1:1 fallback, docs/service.md)
META_CALIBRATION = "facebridge.calibration"
META_SHA256 = "facebridge.weights_sha256"  # optional; the file's own sha256 lives beside it
META_VALIDATION_SAMPLE = "facebridge.validation_sample"  # optional: real fit-row query vectors
META_REQUIRED = (
    META_FORMAT_VERSION,
    META_INPUT_DIM,
    META_OUTPUT_DIM,
    META_SOURCE_MODEL,
    META_TARGET_MODEL,
    META_RECIPE,
    META_CREATED_AT,
)

# Default model ids of the sample kit.
KIT_OLD_MODEL_ID = "dlib-resnet-v1"
KIT_NEW_MODEL_ID = "mobilefacenet-128"


@dataclass(frozen=True)
class TransformerMetadata:
    input_dim: int
    output_dim: int
    source_model: str
    target_model: str
    recipe: str
    created_at: str
    format_version: str = FORMAT_VERSION
    threshold: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    fusion_weight: float = 1.0  # 1 = forward map only; < 1 = two-way (service.fusion)
    calibrations: tuple[decision.ScoreCalibration, ...] = ()
    validation_sample: str | None = None  # META_VALIDATION_SAMPLE as stored (encode_vectors)

    def __post_init__(self) -> None:
        if not 0.0 < self.fusion_weight <= 1.0:
            raise ContractError(f"fusion_weight must lie in (0, 1], got {self.fusion_weight}")

    @property
    def two_way(self) -> bool:
        return self.fusion_weight < 1.0

    def calibration_for(self, *, queries: str | None) -> decision.ScoreCalibration | None:
        """The calibration of the score the service computes with this file (fused or forward),
        for ``queries`` if there is one; None when the file has none (an older file)."""
        kind = decision.SCORE_FUSED if self.two_way else decision.SCORE_FORWARD
        return decision.pick_calibration(self.calibrations, score_kind=kind, queries=queries)

    def to_props(self) -> dict[str, str]:
        """As ONNX ``metadata_props`` (all strings)."""
        props = {
            META_FORMAT_VERSION: self.format_version,
            META_INPUT_DIM: str(self.input_dim),
            META_OUTPUT_DIM: str(self.output_dim),
            META_SOURCE_MODEL: self.source_model,
            META_TARGET_MODEL: self.target_model,
            META_RECIPE: self.recipe,
            META_CREATED_AT: self.created_at,
        }
        if self.threshold is not None:
            props[META_THRESHOLD] = repr(float(self.threshold))
        if self.metrics:
            props[META_METRICS] = json.dumps(self.metrics, sort_keys=True)
        if self.two_way:
            props[META_FUSION_WEIGHT] = repr(float(self.fusion_weight))
        if self.calibrations:
            props[META_CALIBRATION] = decision.calibrations_to_json(self.calibrations)
        if self.validation_sample is not None:
            props[META_VALIDATION_SAMPLE] = self.validation_sample
        return props

    @classmethod
    def from_props(
        cls, props: dict[str, str], *, source: str = "transformer"
    ) -> TransformerMetadata:
        """Parse ``metadata_props``, each field's type and range checked (one ContractError)."""
        fields.meta_required(props, META_REQUIRED, source, (META_FORMAT_VERSION, FORMAT_VERSION))
        weight = fields.meta_float(props, META_FUSION_WEIGHT, source)
        input_dim = fields.meta_dim(props, META_INPUT_DIM, source)
        return cls(
            input_dim=input_dim,
            output_dim=fields.meta_dim(props, META_OUTPUT_DIM, source),
            source_model=fields.meta_text(props, META_SOURCE_MODEL, source),
            target_model=fields.meta_text(props, META_TARGET_MODEL, source),
            recipe=fields.meta_text(props, META_RECIPE, source),
            created_at=fields.meta_text(props, META_CREATED_AT, source),
            format_version=props[META_FORMAT_VERSION],
            threshold=fields.meta_float(props, META_THRESHOLD, source),
            metrics=fields.meta_scalar_object(props, META_METRICS, source),
            fusion_weight=1.0 if weight is None else weight,  # range: __post_init__
            calibrations=decision.calibrations_from_json(
                props.get(META_CALIBRATION), source=source
            ),
            validation_sample=fields.meta_vectors(props, META_VALIDATION_SAMPLE, input_dim, source),
        )


# ---------------------------------------------------------------------------------------------
# 3. Backbone manifest
# ---------------------------------------------------------------------------------------------
class BackboneManifest(BaseModel):
    """JSON beside a backbone ONNX file: how to feed it and what it returns."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model_id: str = Field(min_length=1)
    file: str = Field(min_length=1, description="ONNX file, relative to the manifest")
    input_name: str
    output_name: str
    layout: Literal["NCHW", "NHWC"]
    input_size: tuple[int, int] = (112, 112)
    color: Literal["RGB", "BGR"] = "RGB"
    mean: float | tuple[float, float, float] = 127.5
    std: float | tuple[float, float, float] = 127.5
    output_dim: int = Field(gt=0)
    output_normalized: bool = False
    alignment: str = "arcface-5pt-112"

    @field_validator("std")
    @classmethod
    def _std_positive(
        cls, v: float | tuple[float, float, float]
    ) -> float | tuple[float, float, float]:
        values = v if isinstance(v, tuple) else (v,)
        if any(s <= 0 for s in values):
            raise ValueError("std must be positive")
        return v


def load_backbone_manifest(path: str | Path) -> tuple[BackboneManifest, Path]:
    """Parse a manifest; returns it with the resolved ONNX file path. One clear error line."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        manifest = BackboneManifest.model_validate(data)
    except FileNotFoundError as exc:
        raise ContractError(f"backbone manifest not found: {p}") from exc
    except json.JSONDecodeError as exc:
        raise ContractError(f"{p}: not valid JSON ({exc})") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ContractError(f"{p}: invalid backbone manifest: {where}: {first['msg']}") from exc
    onnx_path = (p.parent / manifest.file).resolve()
    if not onnx_path.is_file():
        raise ContractError(f"{p}: model file {manifest.file!r} not found beside the manifest")
    return manifest, onnx_path
