"""Prometheus metrics, one :class:`CollectorRegistry` per app (tests build many apps per process).

Nothing is registered at import: :class:`ServiceMetrics` is created in ``create_app``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.registry.shadow_stats import Decision, change_kind

if TYPE_CHECKING:
    from service.pipeline import IdentifyOutcome

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
# Top-1 scores (cosine or fused, in [-1, 1]): fine where decision thresholds live.
_SCORE_BUCKETS = (
    0.0, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.82, 0.84, 0.86, 0.88, 0.89, 0.9, 0.91, 0.92, 0.93,
    0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0,
)  # fmt: skip


class ServiceMetrics:
    """The service's metrics and their registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._declare_requests()
        self._declare_gallery()
        self._declare_registry()

    def _declare_requests(self) -> None:
        """HTTP requests, identify stages, images and decisions."""
        self.requests = Counter(
            "facebridge_http_requests_total",
            "HTTP requests by route template, method and status code.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "facebridge_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ("route", "method"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "facebridge_stage_duration_seconds",
            "Time per pipeline stage (decode, align, embed, map, search, rerank, lookup) "
            "per request.",
            ("stage",),
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "facebridge_images_total",
            "Images processed by the pipeline, by operation.",
            ("operation",),
            registry=self.registry,
        )
        self.top1_score = Histogram(
            "facebridge_identify_top1_score",
            "Score of each identify result's best candidate, per transformer version.",
            ("transformer",),
            buckets=_SCORE_BUCKETS,
            registry=self.registry,
        )
        self.identify_decisions = Counter(
            "facebridge_identify_decisions_total",
            "Identify results per image by decision and the transformer version that served "
            "them: match, no_match (top candidate below the threshold, or none), no_face (no "
            "face found, or a 112x112 image refused by the face check), error (another problem "
            "with the image).",
            ("decision", "transformer"),
            registry=self.registry,
        )

    def _declare_gallery(self) -> None:
        """Gallery sizes per space, migration coverage and captures, consistency with SQL."""
        self.gallery_size = Gauge(
            "facebridge_gallery_vectors",
            "Vectors in the gallery index (vector store) of the old model's space.",
            registry=self.registry,
        )
        self.gallery_space_vectors = Gauge(
            "facebridge_gallery_space_vectors",
            "Vectors in this process's store of each embedding space (progressive migration).",
            ("space",),
            registry=self.registry,
        )
        self.migration_coverage = Gauge(
            "facebridge_migration_coverage",
            "Share of identities with at least one native vector (set by GET /v1/migration).",
            registry=self.registry,
        )
        self.captures = Counter(
            "facebridge_captures",
            "Native vectors captured from confident identify requests by this process.",
            registry=self.registry,
        )
        self.gallery_consistent = Gauge(
            "facebridge_gallery_consistent",
            "1 when the last full comparison of the index's ids with SQL's agreed, 0 when it "
            "did not, -1 before the first.",
            registry=self.registry,
        )
        self.gallery_log_position = Gauge(
            "facebridge_gallery_change_log_position",
            "Face change log sequence this process's index reflects (every entry up to it).",
            registry=self.registry,
        )
        self.gallery_sql_faces = Gauge(
            "facebridge_gallery_sql_faces",
            "Faces in SQL (the source of truth), as last counted by /readyz.",
            registry=self.registry,
        )
        self._active_version: str | None = None

    def _declare_registry(self) -> None:
        """The active transformer, its shadow runs, loads and non-finite outputs."""
        self.active_transformer = Gauge(
            "facebridge_active_transformer_info",
            "1 for the transformer version this worker serves with.",
            ("version",),
            registry=self.registry,
        )
        self.shadow_images = Counter(
            "facebridge_shadow_images_total",
            "Images a shadow run compared, by candidate version and top-1 agreement with the "
            "active version (agree, disagree, none = one side had no candidate).",
            ("candidate", "top1"),
            registry=self.registry,
        )
        self.shadow_decisions = Counter(
            "facebridge_shadow_decisions_total",
            "Shadow-compared images by how the reply's decision would change with the candidate "
            "(unchanged, match_to_no_match, no_match_to_match, match_to_other).",
            ("candidate", "change"),
            registry=self.registry,
        )
        self.shadow_scores = Histogram(
            "facebridge_shadow_top1_score",
            "Top-1 scores of shadow-compared images, for the active version and the candidate.",
            ("candidate", "role"),
            buckets=_SCORE_BUCKETS,
            registry=self.registry,
        )
        self.shadow_dropped = Counter(
            "facebridge_shadow_dropped_total",
            "Sampled replies the shadow thread had no room for (its queue was full).",
            ("candidate",),
            registry=self.registry,
        )
        self.transformer_in_sync = Gauge(
            "facebridge_transformer_in_sync",
            "1 when this worker serves the version the database says is active, else 0 (a "
            "failed load: see /readyz for the reason).",
            registry=self.registry,
        )
        self.transformer_load_failures = Counter(
            "facebridge_transformer_load_failures_total",
            "Failed attempts to load (or fit) the active transformer in this worker; retried "
            "with backoff.",
            registry=self.registry,
        )
        self.transformer_nonfinite = Counter(
            "facebridge_transformer_nonfinite_total",
            "Requests answered 503 because the transformer returned NaN/inf.",
            ("version",),
            registry=self.registry,
        )

    def count_decisions(self, outcomes: list[IdentifyOutcome]) -> None:
        """One count per image (``IdentifyOutcome.outcome``) and its top-1 score, per version."""
        for outcome in outcomes:
            version = outcome.transformer or "none"
            self.identify_decisions.labels(decision=outcome.outcome, transformer=version).inc()
            if outcome.candidates:
                self.top1_score.labels(transformer=version).observe(outcome.candidates[0].score)

    def observe_shadow(self, *, candidate: str, active: Decision, shadow: Decision) -> None:
        if active.top1_identity is None or shadow.top1_identity is None:
            top1 = "none"
        else:
            top1 = "agree" if active.top1_identity == shadow.top1_identity else "disagree"
        self.shadow_images.labels(candidate=candidate, top1=top1).inc()
        change = change_kind(active, shadow) or "unchanged"
        self.shadow_decisions.labels(candidate=candidate, change=change).inc()
        for role, decision in (("active", active), ("candidate", shadow)):
            if decision.top1_score is not None:
                self.shadow_scores.labels(candidate=candidate, role=role).observe(
                    decision.top1_score
                )

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage=stage).observe(seconds)

    def set_active_transformer(self, version: str | None) -> None:
        if version == self._active_version:
            return
        if self._active_version is not None:
            self.active_transformer.remove(self._active_version)
        if version is not None:
            self.active_transformer.labels(version=version).set(1)
        self._active_version = version

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts requests and their latency per route TEMPLATE (not per concrete path)."""

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self.metrics.requests.labels(route=template, method=method, status=str(status)).inc()
            self.metrics.latency.labels(route=template, method=method).observe(
                time.perf_counter() - start
            )
