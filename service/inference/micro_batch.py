"""Micro-batching: concurrent requests' crops merged into one backbone call.

Off by default (``FACEBRIDGE_MICRO_BATCH_MAX=1``). On a CPU the kit MobileFaceNet is no faster
per image at larger batches (one run per image is what the service does); on a GPU a batch of
16 costs little more than one image, so merging what concurrent requests send at about the same
time pays. :class:`MicroBatcher` wraps the backbone: ``embed`` (called by the inference pool's
threads, one request each) queues its crops and waits; one batching thread takes the first
waiting request, gathers more for at most ``wait_ms`` or until ``max_images`` crops, runs ONE
``embed`` for all of them (requests with and without flip averaging in separate calls) and hands
each request its own rows. A batch that fails is retried request by request, so one request's
bad input fails only that request. Give the pool enough threads
(``FACEBRIDGE_INFERENCE_THREADS``) for the batches to fill.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from service.errors import ServiceUnavailable
from service.pipeline_types import Backbone
from service.settings_request import RequestPathSettings


@dataclass
class _Request:
    crops: np.ndarray
    flip_average: bool
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class MicroBatcher:
    """A :class:`service.pipeline_types.Backbone` merging concurrent ``embed`` calls."""

    def __init__(
        self, backbone: Backbone, *, max_images: int, wait_ms: float, timeout_s: float = 60.0
    ) -> None:
        self.backbone = backbone
        self.max_images = max(1, int(max_images))
        self.wait_s = max(0.0, float(wait_ms)) / 1000.0
        self.timeout_s = float(timeout_s)
        self.batches = 0  # backbone calls made (for tests and the bench)
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve, name="facebridge-micro-batch", daemon=True
        )
        self._thread.start()

    @property
    def model_id(self) -> str:
        return self.backbone.model_id

    def embed(self, aligned: np.ndarray, *, flip_average: bool = False) -> np.ndarray:
        crops = np.asarray(aligned)
        if crops.ndim != 4 or crops.shape[0] == 0:  # the backbone's own answer (or error)
            return self.backbone.embed(crops, flip_average=flip_average)
        request = _Request(crops=crops, flip_average=bool(flip_average))
        self._queue.put(request)
        if not request.done.wait(self.timeout_s):
            raise ServiceUnavailable("the backbone did not answer in time; retry shortly")
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    # -- the batching thread ---------------------------------------------------------------------
    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """``first`` and what else arrives within the wait, up to ``max_images`` crops; and
        whether the service is closing."""
        batch, images = [first], len(first.crops)
        deadline = time.monotonic() + self.wait_s
        while images < self.max_images:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            images += len(item.crops)
        return batch, False

    def _serve(self) -> None:
        closing = False
        while not closing:
            first = self._queue.get()
            if first is None:
                break
            batch, closing = self._gather(first)
            for flip in (False, True):
                group = [r for r in batch if r.flip_average is flip]
                if group:
                    self._run(group, flip_average=flip)

    def _run(self, group: list[_Request], *, flip_average: bool) -> None:
        self.batches += 1
        try:
            vectors = self.backbone.embed(
                np.concatenate([r.crops for r in group]), flip_average=flip_average
            )
        except Exception as exc:
            if len(group) > 1:  # someone's input broke the batch: each request on its own
                for request in group:
                    self._run([request], flip_average=flip_average)
            else:  # the lone request's own error, raised in its own thread
                group[0].error = exc
                group[0].done.set()
            return
        offset = 0
        for request in group:
            request.result = vectors[offset : offset + len(request.crops)]
            offset += len(request.crops)
            request.done.set()


def micro_batched(backbone: Backbone, settings: RequestPathSettings) -> Backbone:
    """``backbone`` itself when ``FACEBRIDGE_MICRO_BATCH_MAX`` is 1 (the default), else a
    :class:`MicroBatcher` with the settings' batch size and wait."""
    if settings.micro_batch_max <= 1:
        return backbone
    return MicroBatcher(
        backbone, max_images=settings.micro_batch_max, wait_ms=settings.micro_batch_wait_ms
    )
