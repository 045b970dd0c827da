"""Open-set decisions: THE home of score calibration and of the ``match`` rule (pure NumPy).

A :class:`ScoreCalibration` describes ONE score space (today: the active transformer's score,
forward or two-way fused, with the queries it was fitted for; issue 10 adds native new-model
scores): the upper tail of its impostor distribution, ``FAR(t) = P(impostor score >= t)`` per
comparison (one query against one gallery vector of another person).

FAR model (docs/service.md, "Open-set decisions")
- Knots ``(log10 FAR, score)`` measured on impostor scores (the transformer's fit rows, scored
  exactly as the service scores), from FAR = 1 down to the FAR still carried by
  :data:`MIN_KNOT_EXCEEDANCES` impostors. Between knots, ``log10 FAR`` is linear in the score.
- Beyond the last knot: an exponential tail (a generalised Pareto tail with shape 0, fitted by
  maximum likelihood on the impostors above the score at FAR ``TAIL_FAR``: scale = their mean
  excess), anchored at the last knot: ``log10 FAR(t) = log10 F_k - (t - s_k) / (scale ln 10)``.
  On the kit's bridge rows it agrees with the empirical tail to 0.002 in score down to
  FAR = 3e-6 (bench/openset.py, docs/service.md).
- Scores below the first knot (FAR = 1) have FAR 1.

Open-set model: a search compares the query with every gallery VECTOR (a flat index returns the
best face), so with ``N`` gallery vectors and independent impostor comparisons
``FPIR(t, N) = 1 - (1 - FAR(t))^N``. The threshold for a target FPIR is the score at
``FAR* = 1 - (1 - FPIR)^(1/N)``. ``N`` is the number of gallery faces, not identities: a second
face of the same person is nearly a second independent chance for a stranger (measured on the
kit: 2 faces per identity doubled the FPIR; 4 gave x3.1), so counting identities would
under-state the FPIR of a multi-face gallery. With one face per identity they coincide.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Literal, NamedTuple

import numpy as np

from service.errors import ContractError

CALIBRATION_FORMAT = 1
KNOTS_PER_DECADE = 4
MIN_KNOT_EXCEEDANCES = 50
TAIL_FAR = 1e-4  # the exponential tail is fitted on impostors above this FAR's score ...
TAIL_MIN_EXCEEDANCES = 1000  # ... or above the 1000th highest, whichever holds more of them
MIN_LOG10_FAR = -15.0
LN10 = math.log(10.0)

# What kind of score a calibration describes (metadata ``score_kind``).
SCORE_FORWARD = "forward"  # <f(q), g> in the old model's space
SCORE_FUSED = "fused-two-way"  # w <f(q), g> + (1 - w) <q, h(g)> (service.fusion)
SCORE_NATIVE = "native"  # <q, g> in the backbone's own space (issue 10)

Rule = Literal["explicit", "target-fpir", "target-far", "transformer-threshold", "default"]


class _Knots(NamedTuple):
    score: np.ndarray  # increasing
    log10_far: np.ndarray  # decreasing
    score_down: np.ndarray  # the same, reversed (np.interp needs increasing x)
    far_up: np.ndarray


@dataclass(frozen=True)
class ScoreCalibration:
    """Impostor tail of one score space; see the module docstring for the model."""

    score_kind: str  # SCORE_* above
    space: str  # model id of the gallery side's space (e.g. "dlib-resnet-v1")
    queries: str  # "flip-averaged" or "plain": how the calibration queries were embedded
    log10_far: tuple[float, ...]  # knots, strictly decreasing, from about 0 (FAR 1)
    score: tuple[float, ...]  # knots' scores, strictly increasing
    tail_scale: float  # exponential tail's scale (score units), > 0
    n_impostor: int
    n_queries: int = 0
    n_gallery: int = 0
    fusion_weight: float = 1.0
    source: str = ""

    def __post_init__(self) -> None:
        far, score = np.asarray(self.log10_far), np.asarray(self.score)
        if far.size < 2 or far.shape != score.shape:
            raise ContractError("calibration needs >= 2 knots with one score each")
        if not (np.isfinite(far).all() and np.isfinite(score).all()):
            raise ContractError("calibration knots must be finite")
        if np.any(np.diff(far) >= 0) or np.any(np.diff(score) <= 0):
            raise ContractError("calibration knots: FAR must fall and scores must rise")
        if far[0] > 0 or not self.tail_scale > 0 or self.n_impostor <= 0:
            raise ContractError("calibration: FAR <= 1, tail scale > 0, impostors > 0")

    # -- score <-> FAR ---------------------------------------------------------------------
    @cached_property
    def _knots(self) -> _Knots:
        """The knots as float64 arrays, built once (the tuples are the contract; these are read
        on every identify)."""
        scores = np.asarray(self.score, dtype=np.float64)
        fars = np.asarray(self.log10_far, dtype=np.float64)
        return _Knots(scores, fars, scores[::-1].copy(), fars[::-1].copy())

    def log10_far_of(self, score: float | np.ndarray | Sequence[float]) -> np.ndarray:
        """``log10 FAR`` at ``score`` (array in, array out)."""
        s = np.asarray(score, dtype=np.float64)
        knots = self._knots
        last_s, last_f = knots.score[-1], knots.log10_far[-1]
        out = np.interp(s, knots.score, knots.log10_far, left=0.0, right=last_f)
        above = s > last_s
        if above.any():  # the exponential tail
            out = np.where(above, last_f - (s - last_s) / (self.tail_scale * LN10), out)
        return np.minimum(np.maximum(out, MIN_LOG10_FAR), 0.0)  # np.clip's values, less overhead

    def far(self, score: float) -> float:
        """P(impostor score >= ``score``) per comparison."""
        return float(10.0 ** self.log10_far_of(score))

    def score_at_far(self, far: float) -> float:
        """The score whose FAR is ``far`` (the inverse of :meth:`far`)."""
        if not 0.0 < far <= 1.0:
            raise ContractError(f"FAR must lie in (0, 1], got {far}")
        return self.scores_at_log10_far([math.log10(far)])[0]

    def scores_at_log10_far(self, log10_fars: Sequence[float]) -> list[float]:
        """:meth:`score_at_far` at FAR ``10 ** v`` for each ``v`` <= 0 (one NumPy pass)."""
        knots = self._knots
        last_s, last_f = knots.score[-1], knots.log10_far[-1]
        target = np.maximum(np.asarray(log10_fars, dtype=np.float64), MIN_LOG10_FAR)
        # inside the table: interpolate (np.interp needs increasing x); below it, the tail
        out = np.interp(target, knots.far_up, knots.score_down)
        below = target < last_f
        if below.any():
            out = np.where(below, last_s + (last_f - target) * self.tail_scale * LN10, out)
        return out.tolist()

    # -- the contract's JSON ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = CALIBRATION_FORMAT
        data["log10_far"] = [round(v, 6) for v in self.log10_far]
        data["score"] = [round(v, 6) for v in self.score]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "calibration") -> ScoreCalibration:
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise ContractError(f"{source}: calibration format must be {CALIBRATION_FORMAT}")
        try:
            return cls(
                score_kind=str(data["score_kind"]),
                space=str(data["space"]),
                queries=str(data["queries"]),
                log10_far=tuple(float(v) for v in data["log10_far"]),
                score=tuple(float(v) for v in data["score"]),
                tail_scale=float(data["tail_scale"]),
                n_impostor=int(data["n_impostor"]),
                n_queries=int(data.get("n_queries", 0)),
                n_gallery=int(data.get("n_gallery", 0)),
                fusion_weight=float(data.get("fusion_weight", 1.0)),
                source=str(data.get("source", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"{source}: malformed calibration ({exc})") from exc

    @classmethod
    def from_json(cls, text: str, *, source: str = "calibration") -> ScoreCalibration:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContractError(f"{source}: calibration is not JSON ({exc})") from exc
        return cls.from_dict(data, source=source)


def calibrations_to_json(calibrations: Sequence[ScoreCalibration]) -> str:
    """The metadata value ``facebridge.calibration``: a JSON list, one object per score."""
    return json.dumps([c.to_dict() for c in calibrations], sort_keys=True)


def calibrations_from_json(
    text: str | None, *, source: str = "transformer"
) -> tuple[ScoreCalibration, ...]:
    """Parse ``facebridge.calibration`` (None: no calibration); ContractError when malformed."""
    if text is None:
        return ()
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError(f"{source}: calibration metadata is not JSON ({exc})") from exc
    if not isinstance(items, list):
        raise ContractError(f"{source}: calibration metadata must be a JSON list")
    return tuple(ScoreCalibration.from_dict(item, source=source) for item in items)


def pick_calibration(
    calibrations: Sequence[ScoreCalibration], *, score_kind: str, queries: str | None
) -> ScoreCalibration | None:
    """The calibration of ``score_kind``, for ``queries`` when there is one, else for the other
    kind of query (close: flip averaging moves scores little); None when none fits."""
    mine = [c for c in calibrations if c.score_kind == score_kind]
    same = [c for c in mine if c.queries == queries]
    return (same or mine or [None])[0]


def fit_calibration(
    impostor_scores: np.ndarray,
    *,
    score_kind: str,
    space: str,
    queries: str,
    fusion_weight: float = 1.0,
    n_queries: int = 0,
    n_gallery: int = 0,
    source: str = "",
) -> ScoreCalibration:
    """Knots + exponential tail from raw impostor scores (see the module docstring)."""
    scores = np.sort(np.asarray(impostor_scores, dtype=np.float64).ravel())[::-1]
    n = scores.size
    if n <= 2 * TAIL_MIN_EXCEEDANCES or not np.isfinite(scores).all():
        raise ContractError(
            f"calibration needs > {2 * TAIL_MIN_EXCEEDANCES} finite impostor scores, got {n}"
        )
    lowest = math.log10(MIN_KNOT_EXCEEDANCES / n)
    steps = math.floor(-lowest * KNOTS_PER_DECADE + 1e-9)
    log_fars = [-k / KNOTS_PER_DECADE for k in range(steps + 1)]
    # FAR(t) = P(score >= t): the score at FAR f is the ceil(f n)-th highest impostor
    knots: dict[float, float] = {}  # score -> log10 FAR; a tied score keeps its lowest FAR
    for f in log_fars:
        knots[float(scores[max(math.ceil(10.0**f * n), 1) - 1])] = f
    knot_scores = sorted(knots)
    exceed = min(max(int(TAIL_FAR * n), TAIL_MIN_EXCEEDANCES), n - 1)
    threshold = scores[exceed]
    scale = float(np.mean(scores[:exceed] - threshold))
    return ScoreCalibration(
        score_kind=score_kind,
        space=space,
        queries=queries,
        log10_far=tuple(knots[v] for v in knot_scores),
        score=tuple(knot_scores),
        tail_scale=max(scale, 1e-6),
        n_impostor=n,
        n_queries=int(n_queries),
        n_gallery=int(n_gallery),
        fusion_weight=float(fusion_weight),
        source=source,
    )


# ---------------------------------------------------------------------------------------------
# The open-set model
# ---------------------------------------------------------------------------------------------
def far_for_fpir(target_fpir: float, gallery_faces: int) -> float:
    """Per-comparison FAR that gives ``target_fpir`` over ``gallery_faces`` comparisons."""
    if not 0.0 < target_fpir < 1.0:
        raise ContractError(f"target FPIR must lie in (0, 1), got {target_fpir}")
    n = max(int(gallery_faces), 1)
    return -math.expm1(math.log1p(-target_fpir) / n)  # 1 - (1 - FPIR)^(1/N), stably


def estimated_fpir(*, calibration: ScoreCalibration, threshold: float, gallery_faces: int) -> float:
    """The model's FPIR of ``threshold`` on a gallery of ``gallery_faces`` vectors:
    ``1 - (1 - FAR(threshold))^N``. The shadow evaluation's "FPIR at the current size"."""
    n = max(int(gallery_faces), 0)
    far = min(calibration.far(threshold), 1.0 - 1e-16)
    return -math.expm1(n * math.log1p(-far))


def open_set_threshold(
    *, calibration: ScoreCalibration, target_fpir: float, gallery_faces: int
) -> float:
    """The lowest score that keeps the FPIR at ``target_fpir`` for ``gallery_faces`` vectors."""
    return calibration.score_at_far(far_for_fpir(target_fpir, gallery_faces))


@dataclass(frozen=True)
class GalleryCount:
    identities: int  # identities with at least one face
    faces: int  # vectors searched: N of the open-set model


@dataclass(frozen=True)
class Decision:
    """The threshold one request used and the rule that chose it (echoed in the reply)."""

    threshold: float
    rule: Rule
    gallery: GalleryCount | None = None
    target_fpir: float | None = None
    target_far: float | None = None
    estimated_fpir: float | None = None  # the model's FPIR of `threshold` at this size


def decide_identify(
    *,
    requested: float | None,
    calibration: ScoreCalibration | None,
    recommended: float | None,
    default: float,
    target_fpir: float,
    gallery: GalleryCount,
) -> Decision:
    """1:N: an explicit threshold wins; else the calibrated open-set threshold for
    ``target_fpir`` at ``gallery.faces``; without calibration (older files) the transformer's
    own 1:1 threshold, else ``default`` (neither is open-set safe: docs/service.md)."""

    def estimate(threshold: float) -> float | None:
        if calibration is None:
            return None
        return estimated_fpir(
            calibration=calibration, threshold=threshold, gallery_faces=gallery.faces
        )

    if requested is not None:
        return Decision(float(requested), "explicit", gallery, None, None, estimate(requested))
    if calibration is not None:
        t = open_set_threshold(
            calibration=calibration, target_fpir=target_fpir, gallery_faces=gallery.faces
        )
        return Decision(t, "target-fpir", gallery, target_fpir, None, estimate(t))
    if recommended is not None:
        return Decision(float(recommended), "transformer-threshold", gallery)
    return Decision(float(default), "default", gallery)


def decide_verify(
    *,
    requested: float | None,
    calibration: ScoreCalibration | None,
    recommended: float | None,
    default: float,
    target_far: float,
) -> Decision:
    """1:1: explicit, else the calibrated score at ``target_far`` per comparison, else the
    transformer's threshold, else ``default``."""
    if requested is not None:
        return Decision(float(requested), "explicit")
    if calibration is not None:
        t = calibration.score_at_far(target_far)
        return Decision(t, "target-far", target_far=target_far)
    if recommended is not None:
        return Decision(float(recommended), "transformer-threshold")
    return Decision(float(default), "default")


class GalleryCounter:
    """The live size of the searched gallery: ``faces()`` is read on every call (cheap: the
    index's count); ``identities()`` (SQL) only when the face count moved or ``max_age_s``
    passed, so additions and removals by this or any other replica show up at once (faces)
    or within ``max_age_s`` (the reported identity count)."""

    def __init__(
        self,
        *,
        faces: Callable[[], int],
        identities: Callable[[], int],
        max_age_s: float = 2.0,
    ) -> None:
        self._faces, self._identities = faces, identities
        self.max_age_s = float(max_age_s)
        self._cached: tuple[int, int, float] | None = None  # (faces, identities, when)
        self._lock = threading.Lock()

    def current(self) -> GalleryCount:
        faces = int(self._faces())
        now = time.monotonic()
        cached = self._cached
        if cached is None or cached[0] != faces or now - cached[2] > self.max_age_s:
            with self._lock:
                identities = int(self._identities())
                self._cached = cached = (faces, identities, now)
        return GalleryCount(identities=cached[1], faces=faces)


def describe(calibrations: Sequence[ScoreCalibration]) -> list[str]:
    """One line per calibration, for logs and the CLI."""
    return [
        f"{c.score_kind} score in {c.space} ({c.queries} queries): {c.n_impostor} impostors, "
        f"FAR 1e-3 at {c.score_at_far(1e-3):.4f}, 1e-6 at {c.score_at_far(1e-6):.4f}"
        for c in calibrations
    ]
