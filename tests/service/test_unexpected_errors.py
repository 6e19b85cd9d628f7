"""A bug that escapes every handler: the client gets OpenAI's 500 envelope with the request id, and the operator
one log line with the traceback and one request line with status=500 (not status=0, not three tracebacks)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from localimg.api.app import create_app
from localimg.config import Settings
from localimg.registry import Registry
from localimg.service.engine import Engine, EngineConfig
from localimg.service.image_store import ImageStore
from localimg.service.images import ImageService
from tests.service.standin import StandInBackend


def test_an_unexpected_exception_is_one_500_logged_once(caplog: pytest.LogCaptureFixture):
    registry = Registry.from_dict(
        {"models": {"m": {"family": "sd15", "source": {"path": "/nonexistent/m"}}}}, base_dir=Path(".")
    )
    engine = Engine({"m": StandInBackend(name="m", steps=1)}, config=EngineConfig(batch_window_s=0.0))
    service = ImageService(registry, engine, ImageStore(ttl_s=60))

    async def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    service.generate = broken  # type: ignore[method-assign]
    app = create_app(Settings(), service, preload=[])

    async def call() -> httpx.Response:
        # raise_app_exceptions: an exception escaping the app (as uvicorn would log it) fails this test.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
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
