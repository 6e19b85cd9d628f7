"""Property-based fuzzing of the OpenAPI schema with schemathesis, in-process against the ASGI app: whatever the
input, no 5xx, no 422, and every error is OpenAI's envelope.

The app is the real one (routes, validation, planning, engine, encoding, middlewares with API keys and the body
limit) over the stand-in backend of tests/service/standin.py: fuzzed requests ask for up to ten 2048x2048 images,
which the tiny diffusion models would take minutes for on a CPU, and the backend is not what is under test here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from localimg.api.app import create_app
from localimg.config import Settings, key_hashes
from localimg.registry import Registry
from localimg.service.engine import Engine, EngineConfig
from localimg.service.image_store import ImageStore
from localimg.service.images import ImageService
from tests.service.standin import StandInBackend

KEY = "sk-fuzz"
ENVELOPE_KEYS = {"message", "type", "param", "code"}


def _app() -> tuple[object, Engine]:
    registry = Registry.from_dict(
        {
            "models": {
                "tiny": {
                    "family": "sd15",
                    "source": {"path": "/nonexistent/tiny"},
                    "aliases": ["gpt-image-1", "dall-e-2", "dall-e-3"],
                }
            }
        },
        base_dir=Path("."),
    )
    engine = Engine({"tiny": StandInBackend(name="tiny", steps=1)}, config=EngineConfig(batch_window_s=0.0))
    service = ImageService(registry, engine, ImageStore(ttl_s=60))
    app = create_app(Settings(api_key_hashes=key_hashes([KEY], None), max_body_mb=1), service, preload=[])

    async def without_lifespan(scope, receive, send):  # type: ignore[no-untyped-def]
        # schemathesis' ASGI client runs the lifespan around every call, and its shutdown closes the engine;
        # here the engine lives for the module instead (closed by the fixture below).
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await app(scope, receive, send)

    return without_lifespan, engine


APP, ENGINE = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, headers={"Authorization": f"Bearer {KEY}"})


@pytest.fixture(scope="module", autouse=True)
def _close_engine() -> Iterator[None]:
    yield
    ENGINE.close()


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_no_422_and_every_error_is_openai_shaped(case: schemathesis.Case) -> None:
    response = case.call(headers={"Authorization": f"Bearer {KEY}"})
    if case.path == "/ready":
        return  # 503 until the (here never run) preload has finished: that is its contract
    assert response.status_code < 500, response.text
    assert response.status_code != 422, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == ENVELOPE_KEYS, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
