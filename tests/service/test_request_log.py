"""The one log line per request: a failed request names its error, probes polled every few seconds stay out of the
INFO log unless their answer changes, and the request id is one id (the proxy's, behind Ray Serve)."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from localimg.api.app import create_app
from localimg.api.state import AppState
from localimg.config import Settings
from localimg.request_context import RequestIdFilter
from tests.service.standin import StandInBackend, asgi_client, http_scope, one_model_service


def request_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage().split(" ms=")[0]) for r in caplog.records if r.name == "localimg.api.app"]


def test_request_lines_name_the_error_and_log_probes_only_when_their_answer_changes(caplog: pytest.LogCaptureFixture):
    service = one_model_service()
    engine = service.engine
    app = create_app(Settings(), service, preload=[])

    async def calls() -> None:
        async with asgi_client(app) as client:
            await client.post("/v1/images/generations", json={"prompt": "x", "model": "nosuch"})
            await client.post("/v1/images/generations", json={"prompt": "x", "size": "huge"})
            await client.get("/v1/nowhere")
            for _ in range(3):
                await client.get("/ready")  # still loading: 503 each time
            AppState.of(app).ready = True
            for _ in range(2):
                await client.get("/ready")
            await client.get("/v1/models")

    try:
        with caplog.at_level(logging.DEBUG, logger="localimg.api.app"):
            asyncio.run(calls())
    finally:
        engine.close()
    assert request_lines(caplog) == [
        ("INFO", "POST /v1/images/generations status=400 error=invalid_value"),
        ("INFO", "POST /v1/images/generations status=400 error=invalid_value"),
        ("INFO", "GET /v1/nowhere status=404 error=invalid_request_error"),
        ("INFO", "GET /ready status=503"),
        ("DEBUG", "GET /ready status=503"),
        ("DEBUG", "GET /ready status=503"),
        ("INFO", "GET /ready status=200"),
        ("DEBUG", "GET /ready status=200"),
        ("INFO", "GET /v1/models status=200"),
    ]


def test_behind_serve_the_request_id_is_the_one_the_proxy_gave(caplog: pytest.LogCaptureFixture):
    """Serve's proxy puts an x-request-id on the request and adds it to the response itself: a second id of this
    server's would reach the client as "req_…, <uuid>", matching no log line."""
    service = one_model_service()
    engine = service.engine
    app = create_app(Settings(), service, preload=[], behind_serve=True)
    caplog.handler.addFilter(RequestIdFilter())  # as the server's log handler has it

    async def call() -> httpx.Response:
        async with asgi_client(app) as client:
            return await client.post(
                "/v1/images/generations", json={"prompt": "x", "model": "nosuch"}, headers={"x-request-id": "serve-7"}
            )

    try:
        with caplog.at_level(logging.INFO):
            response = asyncio.run(call())
    finally:
        engine.close()
    assert response.status_code == 400 and "x-request-id" not in response.headers
    line = next(r for r in caplog.records if "status=400" in r.getMessage())
    assert line.request_id == "serve-7"


def test_a_client_does_not_choose_the_single_servers_request_id():
    service = one_model_service()
    engine = service.engine
    app = create_app(Settings(), service, preload=[])

    async def call() -> httpx.Response:
        async with asgi_client(app) as client:
            return await client.get("/health", headers={"x-request-id": "mine"})

    try:
        response = asyncio.run(call())
    finally:
        engine.close()
    assert response.headers.get_list("x-request-id") == [response.headers["x-request-id"]]
    assert response.headers["x-request-id"].startswith("req_")


def test_a_connection_lost_under_a_stream_is_a_disconnect_not_an_error(caplog: pytest.LogCaptureFixture):
    """Serve's proxy ending mid-stream makes the replica's `receive` raise (ActorDiedError): the job is cancelled
    as for a client that went away, with no ERROR and no traceback."""
    backend = StandInBackend(name="m", steps=2, hold=True)
    service = one_model_service(backend)
    engine = service.engine
    app = create_app(Settings(), service, preload=[])
    body = [json.dumps({"prompt": "x", "stream": True, "partial_images": 1}).encode()]
    sent: list[dict] = []

    async def receive() -> dict:
        if body:
            return {"type": "http.request", "body": body.pop(), "more_body": False}
        await asyncio.to_thread(backend.started.wait, 10)  # the job is running when the connection goes
        raise RuntimeError("the proxy actor died")

    async def send(message: dict) -> None:
        sent.append(message)

    scope = http_scope("/v1/images/generations", b"application/json")
    try:
        with caplog.at_level(logging.INFO):
            asyncio.run(asyncio.wait_for(app(scope, receive, send), 20))
    finally:
        backend.release.set()
        engine.close()
    assert backend.aborted, "the job was not cancelled"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert any("handled as a client disconnect" in r.getMessage() for r in caplog.records)
