"""Micro-batching (service.inference.micro_batch): concurrent embed calls merged into one
backbone call give each request its own rows; a lone request waits at most the batching wait;
one request's bad input fails only that request."""

from __future__ import annotations

import functools
import threading
import time

import numpy as np
import pytest

from service.errors import ImageError, ServiceUnavailable
from service.inference.micro_batch import MicroBatcher, micro_batched
from service.settings_request import RequestPathSettings
from tests.concurrency import at_once


class FakeBackbone:
    """embed = per-crop mean colour (+ its mirror's when flip-averaging), recorded per call;
    a crop whose first pixel is 255 is bad input: the whole call raises."""

    model_id = "fake"

    def __init__(self, *, delay_s: float = 0.0) -> None:
        self.calls: list[tuple[int, bool]] = []
        self.delay_s = delay_s
        self._lock = threading.Lock()

    def embed(self, aligned: np.ndarray, *, flip_average: bool = False) -> np.ndarray:
        with self._lock:
            self.calls.append((len(aligned), flip_average))
        time.sleep(self.delay_s)
        if (aligned[:, 0, 0, 0] == 255).any():
            raise ImageError("bad crop")
        out = aligned.reshape(len(aligned), -1, 3).mean(axis=1).astype(np.float32)
        return out + (1000.0 if flip_average else 0.0)


def crops(seed: int, n: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 200, size=(n, 8, 8, 3), dtype=np.uint8)


def run_concurrently(batcher: MicroBatcher, inputs: list[tuple[np.ndarray, bool]]) -> list:
    """Each input's embed (or its exception), the calls released together."""
    return at_once(
        *(functools.partial(batcher.embed, batch, flip_average=flip) for batch, flip in inputs)
    )


def test_concurrent_requests_share_calls_and_get_their_own_rows() -> None:
    backbone = FakeBackbone(delay_s=0.01)
    batcher = MicroBatcher(backbone, max_images=64, wait_ms=50)
    try:
        inputs = [(crops(i, n=1 + i % 3), i % 2 == 1) for i in range(12)]
        results = run_concurrently(batcher, inputs)
    finally:
        batcher.close()
    reference = FakeBackbone()
    for (batch, flip), got in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(got, reference.embed(batch, flip_average=flip))
    assert len(backbone.calls) < len(inputs)  # merged
    assert sum(n for n, _ in backbone.calls) == sum(len(b) for b, _ in inputs)


def test_a_batch_never_exceeds_max_images() -> None:
    backbone = FakeBackbone(delay_s=0.01)
    batcher = MicroBatcher(backbone, max_images=4, wait_ms=50)
    try:
        run_concurrently(batcher, [(crops(i, n=2), False) for i in range(8)])
    finally:
        batcher.close()
    assert max(n for n, _ in backbone.calls) <= 4


def test_a_lone_request_waits_at_most_the_batching_wait() -> None:
    backbone = FakeBackbone()
    batcher = MicroBatcher(backbone, max_images=64, wait_ms=30)
    try:
        start = time.perf_counter()
        got = batcher.embed(crops(1))
        elapsed = time.perf_counter() - start
    finally:
        batcher.close()
    np.testing.assert_array_equal(got, FakeBackbone().embed(crops(1)))
    assert elapsed < 5.0  # answered after the wait, not held for a batch that never fills
    assert backbone.calls == [(1, False)]


def test_a_stuck_backbone_answers_503_after_the_timeout() -> None:
    backbone = FakeBackbone(delay_s=1.0)
    batcher = MicroBatcher(backbone, max_images=4, wait_ms=0, timeout_s=0.05)
    try:
        with pytest.raises(ServiceUnavailable):
            batcher.embed(crops(1))
    finally:
        batcher.close()


def test_one_bad_request_does_not_poison_the_batch() -> None:
    backbone = FakeBackbone(delay_s=0.01)
    batcher = MicroBatcher(backbone, max_images=64, wait_ms=50)
    bad = crops(99, n=2)
    bad[1, 0, 0, 0] = 255
    inputs = [(crops(i), False) for i in range(5)] + [(bad, False)]
    try:
        results = run_concurrently(batcher, inputs)
    finally:
        batcher.close()
    assert isinstance(results[-1], ImageError)
    for (batch, _), got in zip(inputs[:-1], results[:-1], strict=True):
        np.testing.assert_array_equal(got, FakeBackbone().embed(batch))


def test_off_by_default() -> None:
    backbone = FakeBackbone()
    assert micro_batched(backbone, RequestPathSettings()) is backbone
    wrapped = micro_batched(backbone, RequestPathSettings(micro_batch_max=8))
    assert isinstance(wrapped, MicroBatcher) and wrapped.model_id == "fake"
    wrapped.close()
