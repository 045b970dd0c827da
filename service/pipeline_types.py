"""The values one request passes between the stages of :mod:`service.pipeline` (plain data).

Kept apart from the orchestration so the pipeline module stays readable; ``service.pipeline``
re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.decision import SCORE_NATIVE, ScoreCalibration, pick_calibration
from service.errors import FacebridgeError, NoFaceFound
from service.inference.transformer import TransformerRunner


@dataclass(frozen=True)
class ActiveMapping:
    """The transformer a request uses, read once: version id + its mapping + its threshold.

    A two-way transformer also brings ``map_gallery`` (old -> new, L2-normalised there) and a
    ``fusion_weight`` < 1: scores are then the fused ``w * <f(q), g> + (1 - w) * <q, h(g)>``.
    """

    version: str
    map: Callable[[np.ndarray], np.ndarray]
    threshold: float | None = None  # the file's 1:1 threshold (FAR 1e-3 on its fit rows)
    fusion_weight: float = 1.0
    map_gallery: Callable[[np.ndarray], np.ndarray] | None = None
    calibration: ScoreCalibration | None = None  # open-set calibration of its score
    # native new/new scores' calibration (service.migration.fusion; None: the fallback)
    native_calibration: ScoreCalibration | None = None

    @property
    def two_way(self) -> bool:
        return self.map_gallery is not None and self.fusion_weight < 1.0

    @classmethod
    def from_runner(
        cls,
        *,
        version: str,
        runner: TransformerRunner,
        threshold: float | None,
        queries: str | None = None,
    ) -> ActiveMapping:
        """The mapping of a loaded transformer runner (active, or a shadow candidate), with the
        file's open-set calibration for ``queries`` (flip-averaged or plain; None: either)."""
        metadata = getattr(runner, "metadata", None)
        return cls(
            version=version,
            map=runner.map,
            threshold=threshold,
            fusion_weight=runner.fusion_weight,
            map_gallery=runner.map_gallery if runner.two_way else None,
            calibration=None if metadata is None else metadata.calibration_for(queries=queries),
            native_calibration=None
            if metadata is None
            else pick_calibration(metadata.calibrations, score_kind=SCORE_NATIVE, queries=queries),
        )


@dataclass(frozen=True)
class GalleryHit:
    """What the identify response needs to know about one gallery vector (a face row in SQL)."""

    face_id: int
    identity_id: int
    external_id: str | None
    name: str | None


@dataclass(frozen=True)
class ImageUpload:
    data: bytes
    filename: str | None = None


@dataclass
class StageTimes:
    decode: float = 0.0
    align: float = 0.0
    embed: float = 0.0
    map: float = 0.0
    search: float = 0.0
    rerank: float = 0.0  # fused re-scoring of the candidates (two-way transformers only)
    lookup: float = 0.0

    def as_ms(self) -> dict[str, float]:
        stages = {
            "decode_ms": self.decode,
            "align_ms": self.align,
            "embed_ms": self.embed,
            "map_ms": self.map,
            "search_ms": self.search,
            "rerank_ms": self.rerank,
            "lookup_ms": self.lookup,
        }
        out = {k: round(v * 1000.0, 3) for k, v in stages.items()}
        out["total_ms"] = round(sum(stages.values()) * 1000.0, 3)
        return out


@dataclass(frozen=True)
class Candidate:
    identity_id: int
    external_id: str | None
    name: str | None
    score: float
    face_id: int
    spaces: tuple[str, ...] = ()  # the spaces whose evidence this candidate has (migration)


@dataclass
class IdentifyOutcome:
    index: int
    filename: str | None
    candidates: list[Candidate]
    match: Candidate | None
    backbone: str
    transformer: str
    timings: StageTimes = field(default_factory=StageTimes)
    error: FacebridgeError | None = None  # this image failed (no face, unreadable, ...)

    @property
    def outcome(self) -> str:
        """``match``, ``no_match``, ``no_face`` or ``error`` (the metrics' decision label)."""
        if self.error is not None:
            return "no_face" if isinstance(self.error, NoFaceFound) else "error"
        return "match" if self.match is not None else "no_match"


@dataclass
class MappedFaces:
    """Old-space vectors for a request's usable images, with the versions that made them.

    Row r of the vectors belongs to upload ``image_index[r]``; ``errors`` holds the uploads
    that failed (only when the caller asked for per-image results); ``timings`` has one entry
    per upload.
    """

    vectors: np.ndarray  # [n, d_old], L2-normalised by the transformer runner
    queries_new: np.ndarray  # [n, d_new], the backbone's unit vectors (fused scoring needs them)
    backbone: str
    transformer: str
    threshold: float | None
    timings: list[StageTimes]
    image_index: list[int] = field(default_factory=list)
    errors: dict[int, FacebridgeError] = field(default_factory=dict)


@dataclass(frozen=True)
class IdentifyReply:
    """What an identify reply was made of: handed to ``after_identify`` (the shadow
    evaluation) once the reply is computed; it must never change the reply. ``outcomes`` are
    the answered images only, row-aligned with ``queries_new`` (failed images are left out)."""

    queries_new: np.ndarray  # [n, d_new] the backbone's unit vectors
    outcomes: list[IdentifyOutcome]
    top_k: int
    threshold: float | None  # as requested (None: each version's own rule)
    transformer: str


AfterIdentifyFn = Callable[[IdentifyReply], None]


class Backbone(Protocol):
    """What the pipeline needs of a backbone (``service.inference.backbone.OnnxBackbone``)."""

    @property
    def model_id(self) -> str: ...

    def embed(self, aligned: np.ndarray, *, flip_average: bool = False) -> np.ndarray: ...


# search(vectors [n, d], k) -> per query (face ids, scores), best first, empty slots dropped.
SearchFn = Callable[[np.ndarray, int], list[tuple[np.ndarray, np.ndarray]]]
# search_with_vectors(vectors, k) -> per query (face ids, scores, stored vectors [len(ids), d]),
# the vectors read atomically with the search: what fused re-scoring needs.
SearchWithVectorsFn = Callable[[np.ndarray, int], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]
LookupFn = Callable[[Sequence[int]], dict[int, GalleryHit]]
SnapshotFn = Callable[[], ActiveMapping | None]
