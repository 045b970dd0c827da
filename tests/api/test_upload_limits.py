"""Upload limits: refused with 413 while streaming (not after reading it all); 415; empty 422."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.testclient import TestClient

from service.api.problems import BodyLimitMiddleware

from .conftest import ADMIN, assert_problem


def _run_asgi(app: Any, *, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> dict:
    """Drive an ASGI app with a streamed body; report status and how many chunks it pulled."""
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": True}
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/identify", "headers": headers}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return {"status": start["status"], "pulled": pulled, "messages": sent}


async def _read_everything(scope: dict, receive: Any, send: Any) -> None:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_streamed_body_is_cut_off_at_the_limit() -> None:
    app = BodyLimitMiddleware(_read_everything, limit_for=lambda path: 50_000)
    chunks = [b"x" * 10_000] * 100  # 1 MB, chunked (no Content-Length)
    result = _run_asgi(app, chunks=chunks, headers=[])
    assert result["status"] == 413
    assert result["pulled"] == 6  # stopped right after passing 50 kB, 94 chunks never read


def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    app = BodyLimitMiddleware(_read_everything, limit_for=lambda path: 50_000)
    result = _run_asgi(app, chunks=[b"x"] * 10, headers=[(b"content-length", b"1000000")])
    assert result["status"] == 413
    assert result["pulled"] == 0


def test_small_body_passes_through() -> None:
    app = BodyLimitMiddleware(_read_everything, limit_for=lambda path: 50_000)
    result = _run_asgi(app, chunks=[b"x" * 1000] * 3, headers=[])
    assert result["status"] == 200


def test_oversized_identify_upload_is_413(client: TestClient, keys: dict) -> None:
    big = b"\xff\xd8" + b"0" * (300 * 1024)  # > max_upload_bytes (256 kB) in the test settings
    response = client.post(
        "/v1/identify", files=[("image", ("big.jpg", big, "image/jpeg"))], headers=keys["identify"]
    )
    assert_problem(response, 413, "payload-too-large")


def test_oversized_transformer_upload_is_413(client: TestClient) -> None:
    response = client.post(
        "/v1/admin/transformers",
        files={"file": ("big.onnx", b"0" * (100 * 1024), "application/octet-stream")},
        headers=ADMIN,
    )
    assert_problem(response, 413, "payload-too-large")


def test_non_multipart_body_is_415(client: TestClient, keys: dict) -> None:
    response = client.post("/v1/identify", json={"image": "base64..."}, headers=keys["identify"])
    assert_problem(response, 415, "unsupported-media-type")


def test_non_image_part_is_415(client: TestClient, keys: dict) -> None:
    response = client.post(
        "/v1/identify",
        files=[("image", ("notes.txt", b"hello", "text/plain"))],
        headers=keys["identify"],
    )
    assert_problem(response, 415, "unsupported-media-type")
