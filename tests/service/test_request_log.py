"""The one log line per request: a failed request names its error, and probes polled every few seconds stay out
of the INFO log unless their answer changes."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from localimg.api.app import create_app
from localimg.config import Settings
from tests.service.standin import one_model_service


def request_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage().split(" ms=")[0]) for r in caplog.records if r.name == "localimg.api.app"]


def test_request_lines_name_the_error_and_log_probes_only_when_their_answer_changes(caplog: pytest.LogCaptureFixture):
    service = one_model_service()
    engine = service.engine
    app = create_app(Settings(), service, preload=[])

    async def calls() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await client.post("/v1/images/generations", json={"prompt": "x", "model": "nosuch"})
            await client.post("/v1/images/generations", json={"prompt": "x", "size": "huge"})
            await client.get("/v1/nowhere")
            for _ in range(3):
                await client.get("/ready")  # still loading: 503 each time
            app.state.ready = True
            for _ in range(2):
                await client.get("/ready")
            await client.get("/v1/models")

    try:
        with caplog.at_level(logging.DEBUG, logger="localimg.api.app"):
            asyncio.run(calls())
    finally:
        engine.close()
    assert request_lines(caplog) == [
        ("INFO", "POST /v1/images/generations status=400 error=model_not_found"),
        ("INFO", "POST /v1/images/generations status=400 error=invalid_value"),
        ("INFO", "GET /v1/nowhere status=404 error=invalid_request_error"),
        ("INFO", "GET /ready status=503"),
        ("DEBUG", "GET /ready status=503"),
        ("DEBUG", "GET /ready status=503"),
        ("INFO", "GET /ready status=200"),
        ("DEBUG", "GET /ready status=200"),
        ("INFO", "GET /v1/models status=200"),
    ]
