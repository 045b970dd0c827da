"""Chunked, resumable extraction: the run's state file, one chunk's preparation, embedding and
atomic write, and the join of all chunks into one pairs set. Torch-free."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.contracts import PAIRS_NEW_FLIP, PairsSet
from service.errors import ContractError, FacebridgeError, ImageError
from service.files import atomic_path, write_text_atomically
from training.data.samples import (
    STATE_FILE,
    STATE_VERSION,
    ImageRecord,
    OnnxSide,
    Preparer,
    Sample,
    Side,
    split_for_identity,
)


@dataclass
class ExtractionResult:
    output: Path
    rows: int
    images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    chunks_done_before: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def chunk_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".chunks")


def chunk_path(chunk_dir: Path, index: int) -> Path:
    return chunk_dir / f"chunk_{index:06d}.npz"


def run_state(records: Sequence[ImageRecord], settings: dict[str, Any]) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(r.relpath for r in records).encode()).hexdigest()
    return {"version": STATE_VERSION, "images": len(records), "list_sha256": digest, **settings}


def check_or_write_state(chunk_dir: Path, state: dict[str, Any]) -> None:
    path = chunk_dir / STATE_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != state:
            diff = sorted(k for k in set(previous) | set(state) if previous.get(k) != state.get(k))
            if diff == [PAIRS_NEW_FLIP]:  # one line that says exactly what to do
                how = (
                    "started with new_flip: finish it with --new-flip"
                    if previous.get(PAIRS_NEW_FLIP)
                    else "started without new_flip (chunks never mix): finish it with "
                    "--no-new-flip, then add new_flip with `facebridge pairs add-flip`"
                )
                raise ContractError(
                    f"{chunk_dir} holds an interrupted run {how}; or delete that folder to "
                    "start over"
                )
            raise ContractError(
                f"{chunk_dir} holds an interrupted run with different settings "
                f"({', '.join(diff)}); rerun with the same options, or delete that folder "
                "to start over"
            )
        return
    write_text_atomically(path, json.dumps(state, indent=2, sort_keys=True))


def write_chunk(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:  # a chunk file exists only when complete
        np.savez(tmp, **arrays)


def prepare_chunk(
    preparer: Preparer,
    records: Sequence[ImageRecord],
    pool: ThreadPoolExecutor | None,
    photo_sides: dict[str, Side],
) -> tuple[list[Sample], list[tuple[str, str]]]:
    def one(record: ImageRecord) -> list[Sample] | FacebridgeError:
        try:
            samples = preparer.prepare(record)
        except FacebridgeError as exc:  # ImageError / PayloadTooLarge: skip this image
            return exc
        for sample in samples:
            for role, side in photo_sides.items():
                sample.vectors[role] = side.embed_samples([sample])[0]
            sample.photo = None
        return samples

    results = list(pool.map(one, records)) if pool is not None else [one(r) for r in records]
    samples: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    for record, result in zip(records, results, strict=True):
        if isinstance(result, FacebridgeError):
            skipped.append((record.relpath, str(result)))
        else:
            samples += result
    return samples, skipped


def embed_chunk(
    samples: Sequence[Sample],
    *,
    old: Side,
    new: Side,
    batch_size: int,
    with_faces: bool,
    eval_fraction: float,
    new_flip: bool = False,
) -> dict[str, np.ndarray]:

    def embed(side: Side, role: str) -> np.ndarray:
        if not samples:
            return np.empty((0, side.output_dim), np.float32)
        if side.needs_photo:  # already embedded while preparing
            return np.stack([s.vectors[role] for s in samples]).astype(np.float32)
        parts = [
            side.embed_samples(samples[start : start + batch_size])
            for start in range(0, len(samples), batch_size)
        ]
        return np.concatenate(parts)

    def embed_with_flip(side: OnnxSide) -> tuple[np.ndarray, np.ndarray]:
        """Each batch's crops and their mirrors in one backbone call."""
        if not samples:
            empty = np.empty((0, side.output_dim), np.float32)
            return empty, empty.copy()
        parts = [
            side.embed_samples_with_mirror(samples[start : start + batch_size])
            for start in range(0, len(samples), batch_size)
        ]
        return np.concatenate([p for p, _ in parts]), np.concatenate([f for _, f in parts])

    flip_arrays: dict[str, np.ndarray] = {}
    if new_flip:
        assert isinstance(new, OnnxSide)  # checked in extract_pairs
        new_vectors, flip_arrays[PAIRS_NEW_FLIP] = embed_with_flip(new)
    else:
        new_vectors = embed(new, "new")
    arrays: dict[str, np.ndarray] = {
        "old": embed(old, "old"),
        "new": new_vectors,
        **flip_arrays,
        "label": np.array([s.record.label for s in samples], dtype=np.int64),
        "name": np.array([s.record.identity for s in samples], dtype=str),
        "path": np.array([s.record.relpath for s in samples], dtype=str),
        "augment": np.array([s.augment for s in samples], dtype=str),
    }
    if eval_fraction > 0:
        arrays["split"] = np.array(
            [split_for_identity(s.record.identity, eval_fraction=eval_fraction) for s in samples],
            dtype=str,
        )
    if with_faces:
        arrays["landmarks5"] = np.array(
            [s.face.landmarks5 if s.face is not None else np.full((5, 2), np.nan) for s in samples],
            dtype=np.float32,
        ).reshape(len(samples), 5, 2)
    return arrays


def join_chunks(chunk_dir: Path, n_chunks: int) -> PairsSet:
    parts: dict[str, list[np.ndarray]] = {}
    keys: set[str] | None = None
    for k in range(n_chunks):
        path = chunk_path(chunk_dir, k)
        with np.load(path, allow_pickle=False) as z:
            if keys is not None and set(z.files) != keys:
                odd = sorted(keys ^ set(z.files))
                raise ContractError(
                    f"{path} differs from the earlier chunks in {', '.join(odd)}: chunks of "
                    f"different runs are never mixed; delete {chunk_dir} and extract again"
                )
            keys = set(z.files)
            for key in z.files:
                parts.setdefault(key, []).append(z[key])
    arrays = {key: np.concatenate(values) for key, values in parts.items()}
    if arrays["label"].shape[0] == 0:
        raise ImageError(
            f"no usable image: every image was skipped (see {chunk_dir / 'skipped.jsonl'})"
        )
    named = ("old", "new", "label", "name", "path", "split", PAIRS_NEW_FLIP)
    return PairsSet(
        old=arrays["old"],
        new=arrays["new"],
        label=arrays["label"],
        name=arrays["name"],
        path=arrays["path"],
        split=arrays.get("split"),
        extra={k: v for k, v in arrays.items() if k not in named},
        new_flip=arrays.get(PAIRS_NEW_FLIP),
    )


def read_skipped(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["path"], r["reason"]) for r in rows]


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(*, total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="extracting", dynamic_ncols=True)
