"""Typed reading of ONNX ``metadata_props`` values (all strings on the wire), and the codec of
the validation sample a transformer file may carry (``facebridge.validation_sample``).

Each reader raises one :class:`~service.errors.ContractError` line naming the file and the key,
so a value of the wrong type never reaches the registry (the database, a 500).
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np

from service.errors import ContractError

MAX_META_TEXT = 255  # the registry's model id / recipe columns
MAX_EMBEDDING_DIM = 65536
MAX_SAMPLE_ROWS = 1024


def meta_required(
    props: dict[str, str], keys: tuple[str, ...], source: str, exact: tuple[str, str]
) -> None:
    """Every key of ``keys`` present, and ``exact`` = (key, the one value it may have)."""
    missing = [key for key in keys if key not in props]
    if missing:
        raise ContractError(f"{source}: metadata_props lacks {', '.join(missing)}")
    key, expected = exact
    if props[key] != expected:
        raise ContractError(f"{source}: {key} is {props[key]!r}; this service reads {expected!r}")


def meta_vectors(props: dict[str, str], key: str, dim: int, source: str) -> str | None:
    """The value of ``key`` after checking it decodes to [n, dim] vectors (None: absent)."""
    if key in props:
        decode_vectors(props[key], dim=dim, key=f"{source}: {key}")
    return props.get(key)


def meta_text(props: dict[str, str], key: str, source: str) -> str:
    value = props[key].strip()
    if not value or len(value) > MAX_META_TEXT:
        raise ContractError(f"{source}: {key} must be 1-{MAX_META_TEXT} characters")
    return value


def meta_dim(props: dict[str, str], key: str, source: str) -> int:
    try:
        value = int(props[key])
    except ValueError as exc:
        raise ContractError(f"{source}: {key} is not an integer: {props[key]!r}") from exc
    if not 0 < value <= MAX_EMBEDDING_DIM:
        raise ContractError(f"{source}: {key} must lie in 1..{MAX_EMBEDDING_DIM}, got {value}")
    return value


def meta_float(props: dict[str, str], key: str, source: str) -> float | None:
    """A finite number, or None when the key is absent."""
    if key not in props:
        return None
    try:
        value = float(props[key])
    except ValueError as exc:
        raise ContractError(f"{source}: {key} is not a number: {props[key]!r}") from exc
    if not math.isfinite(value):
        raise ContractError(f"{source}: {key} must be finite, got {props[key]!r}")
    return value


def meta_scalar_object(props: dict[str, str], key: str, source: str) -> dict[str, Any]:
    """A JSON object of named scalars (numbers, strings, booleans, null); {} when absent."""
    if key not in props:
        return {}
    try:
        value = json.loads(props[key])
    except ValueError as exc:
        raise ContractError(f"{source}: {key} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ContractError(
            f"{source}: {key} must be a JSON object of named values, got {type(value).__name__}"
        )
    for name, item in value.items():
        if not isinstance(item, int | float | str | bool) and item is not None:
            raise ContractError(
                f"{source}: {key}[{name!r}] must be a number, string, boolean or null, "
                f"got {type(item).__name__}"
            )
    return value


def encode_vectors(vectors: np.ndarray) -> str:
    """[n, d] vectors as JSON ``{"dtype": "<f4", "shape": [n, d], "base64": ...}``."""
    arr = np.ascontiguousarray(vectors, dtype="<f4")
    if arr.ndim != 2 or not 0 < arr.shape[0] <= MAX_SAMPLE_ROWS:
        raise ContractError(f"a sample is [n, d] with 1 <= n <= {MAX_SAMPLE_ROWS}, got {arr.shape}")
    payload = {"dtype": "<f4", "shape": list(arr.shape), "base64": base64.b64encode(arr).decode()}
    return json.dumps(payload, sort_keys=True)


def decode_vectors(text: str, *, dim: int, key: str) -> np.ndarray:
    """The finite float32 [n, dim] vectors of an :func:`encode_vectors` value."""
    try:
        payload = json.loads(text)
        shape = tuple(int(v) for v in payload["shape"])
        if payload["dtype"] != "<f4" or len(shape) != 2:
            raise ValueError(f"dtype {payload['dtype']!r}, shape {shape}")
        raw = base64.b64decode(payload["base64"], validate=True)
        arr = np.frombuffer(raw, dtype="<f4").reshape(shape)
    except (ValueError, KeyError, TypeError) as exc:
        raise ContractError(f"{key}: malformed sample ({exc})") from exc
    if not 0 < shape[0] <= MAX_SAMPLE_ROWS or shape[1] != dim:
        wanted = f"[1..{MAX_SAMPLE_ROWS}, {dim}]"
        raise ContractError(f"{key}: sample is {list(shape)}; expected {wanted}")
    if not np.isfinite(arr).all():
        raise ContractError(f"{key}: sample holds NaN/inf")
    return arr.astype(np.float32)


def evenly_spaced_unit_rows(vectors: np.ndarray, *, rows: int) -> np.ndarray:
    """``rows`` evenly spaced rows of ``vectors``, L2-normalised (as service queries are)."""
    arr = np.asarray(vectors, dtype=np.float32)
    picked = arr[np.linspace(0, len(arr) - 1, num=min(rows, len(arr))).astype(int)]
    norms = np.linalg.norm(picked, axis=1, keepdims=True)
    return picked / np.maximum(norms, 1e-12)
