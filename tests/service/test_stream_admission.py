"""A stream is admitted (or refused) before its first byte, in one step with joining the queue: a burst past
`--max-queue` gets plain 429s the SDKs retry, not 200s whose only event is an error. A stream whose body is never
read (the client left before the first byte) drops its job."""

from __future__ import annotations

import asyncio
import json

from localimg.api.app import create_app
from localimg.config import Settings
from tests.service.standin import StandInBackend, asgi_client, http_scope, one_model_service, plan

STREAM = {"prompt": "a cat", "size": "256x256", "stream": True}


def test_a_burst_of_streams_past_the_queue_limit_gets_429s_before_any_byte():
    backend = StandInBackend(name="m", steps=1, hold=True)
    service = one_model_service(backend, max_queue=2)
    engine = service.engine
    app = create_app(Settings(), service, preload=[])

    async def scenario() -> list[tuple[int, str]]:
        blocker = asyncio.create_task(engine.generate(plan(1, width=16), client="x"))  # one of the two places
        assert await asyncio.to_thread(backend.started.wait, 10)
        async with asgi_client(app) as client:

            async def post() -> tuple[int, str]:
                response = await client.post("/v1/images/generations", json=STREAM)
                return response.status_code, response.text

            burst = [asyncio.create_task(post()) for _ in range(3)]
            await until(lambda: engine.metrics.rejected.labels("queue_full")._value.get() >= 2)
            backend.release.set()
            answers = await asyncio.gather(*burst)
        await blocker
        return answers

    try:
        answers = asyncio.run(asyncio.wait_for(scenario(), 20))
    finally:
        engine.close()
    assert sorted(status for status, _ in answers) == [200, 429, 429]
    for status, text in answers:
        if status == 200:
            assert text.startswith("event: image_generation.completed") and "event: error" not in text
        else:
            assert json.loads(text)["error"]["code"] == "rate_limit_exceeded"


def test_a_stream_whose_body_is_never_read_drops_its_job():
    backend = StandInBackend(name="m", steps=1, hold=True)
    service = one_model_service(backend)
    engine = service.engine
    app = create_app(Settings(), service, preload=[])
    body = [json.dumps(STREAM).encode()]

    async def receive() -> dict:
        if body:
            return {"type": "http.request", "body": body.pop(), "more_body": False}
        return {"type": "http.disconnect"}  # gone at once: the response is cancelled before it reads an event

    async def send(message: dict) -> None:
        await asyncio.sleep(0.5)  # a slow socket: the disconnect is noticed while the headers are being sent

    async def scenario() -> None:
        blocker = asyncio.create_task(engine.generate(plan(1, width=16), client="x"))
        assert await asyncio.to_thread(backend.started.wait, 10)
        await app(http_scope("/v1/images/generations", b"application/json"), receive, send)
        await until(lambda: engine.in_flight == 1)  # the blocker alone: the stream's job was dropped
        backend.release.set()
        await blocker

    try:
        asyncio.run(asyncio.wait_for(scenario(), 20))
    finally:
        engine.close()
    assert len(backend.calls) == 1
    assert engine.metrics.registry.get_sample_value("localimg_cancelled_total", {"model": "m", "reason": "client"}) == 1


async def until(condition, timeout_s: float = 10) -> None:
    """Wait for `condition()` to hold (polled), failing the test after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.01)
