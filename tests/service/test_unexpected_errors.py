"""A bug that escapes every handler: the client gets OpenAI's 500 envelope with the request id, and the operator
one log line with the traceback and one request line with status=500 (not status=0, not three tracebacks)."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from localimg.api.app import create_app
from localimg.config import Settings
from tests.service.standin import asgi_client, http_scope, one_model_service


def test_an_unexpected_exception_is_one_500_logged_once(caplog: pytest.LogCaptureFixture):
    service = one_model_service()
    engine = service.engine

    async def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    service.generate = broken  # type: ignore[method-assign]
    app = create_app(Settings(), service, preload=[])

    async def call() -> httpx.Response:
        async with asgi_client(app) as client:
            return await client.post("/v1/images/generations", json={"prompt": "x"})

    try:
        with caplog.at_level(logging.INFO):
            response = asyncio.run(call())
    finally:
        engine.close()
    assert response.status_code == 500 and response.headers["x-should-retry"] == "false"
    request_id = response.headers["x-request-id"]
    error = response.json()["error"]
    assert error["type"] == "server_error" and request_id in error["message"]
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and isinstance(tracebacks[0].exc_info[1], ZeroDivisionError)
    assert any("POST /v1/images/generations status=500" in r.getMessage() for r in caplog.records)


def test_a_client_gone_mid_upload_is_a_499_line_not_an_error(caplog: pytest.LogCaptureFixture):
    service = one_model_service()
    engine = service.engine
    app = create_app(Settings(), service, preload=[])
    body = [b'--b\r\ncontent-disposition: form-data; name="image"; filename="a.png"\r\n\r\n\x89PNG', None]
    sent: list[dict] = []

    async def receive() -> dict:  # the first part of a multipart body, then the client is gone
        chunk = body.pop(0) if body else None
        if chunk is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = http_scope("/v1/images/edits", b"multipart/form-data; boundary=b")
    try:
        with caplog.at_level(logging.INFO):
            asyncio.run(app(scope, receive, send))
    finally:
        engine.close()
    assert not sent  # nobody to answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("POST /v1/images/edits status=499" in r.getMessage() for r in caplog.records)
