"""Prometheus metrics, one :class:`CollectorRegistry` per app (tests build many apps per process).

Nothing is registered at import: :class:`ServiceMetrics` is created in ``create_app``.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class ServiceMetrics:
    """The service's metrics and their registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
        self.gallery_size = Gauge(
            "facebridge_gallery_vectors",
            "Vectors in the FAISS gallery index.",
            registry=self.registry,
        )
        self.active_transformer = Gauge(
            "facebridge_active_transformer_info",
            "1 for the transformer version this worker serves with.",
            ("version",),
            registry=self.registry,
        )
        self._active_version: str | None = None

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
