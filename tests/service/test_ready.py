"""GET /ready while a preloaded model is unavailable: 503 naming it, and the probes themselves retry the load,
so weights put in place turn the server ready without a client request (a balancer sends none to a 503)."""

from __future__ import annotations

import asyncio
import time

import pytest
from PIL import Image

from localimg.api.app import create_app, preload_and_warm_up
from localimg.api.state import AppState
from localimg.config import Settings
from localimg.errors import DeviceFailedError, ModelUnavailableError
from localimg.service.transparency import TransparencyStage
from tests.service.standin import StandInBackend, asgi_client, one_model_service, plan


def test_ready_probes_retry_a_failed_preload(monkeypatch: pytest.MonkeyPatch):
    backend = StandInBackend(name="m", steps=1)
    backend.load_fails_with = ModelUnavailableError("weights missing", code="model_weights_missing")
    service = one_model_service(backend)
    engine = service.engine
    app = create_app(Settings(), service, preload=[])

    async def scenario() -> None:
        await engine.preload(["m"])  # what the app's startup does
        state = AppState.of(app)
        state.preloaded, state.ready = ["m"], True
        async with asgi_client(app) as client:
            first = await client.get("/ready")
            assert first.status_code == 503 and first.json() == {"status": "unavailable", "models": ["m"]}
            backend.load_fails_with = None  # the operator puts the weights in place
            monkeypatch.setattr("localimg.service.residency.RELOAD_BACKOFF_S", 0.0)  # ... and the back-off passes
            for _ in range(100):
                if (await client.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("/ready never turned 200 after the weights were put in place")
        assert engine.is_loaded("m")

    try:
        asyncio.run(asyncio.wait_for(scenario(), 20))
    finally:
        engine.close()


def test_a_warm_up_that_fails_unexpectedly_still_ends_the_loading_state(caplog: pytest.LogCaptureFixture):
    backend = StandInBackend(name="m", steps=1)
    backend.fail_with = ValueError("Height (512) cannot be greater than pos_embed_max_size")  # a pipeline's own
    service = one_model_service(backend)
    engine = service.engine
    app = create_app(Settings(warmup_sizes=("512x512", "4096x4096", "260x260", "256x256")), service, preload=["m"])

    caplog.set_level("INFO", logger="localimg.service.warmup")

    async def scenario() -> None:
        await preload_and_warm_up(AppState.of(app), ["m"])  # what the app's startup runs
        async with asgi_client(app) as client:
            assert (await client.get("/ready")).status_code == 200  # loaded: it serves what it can

    try:
        asyncio.run(asyncio.wait_for(scenario(), 20))
    finally:
        engine.close()
    failures = [r.getMessage() for r in caplog.records if "warm-up of m" in r.getMessage()]
    assert failures == [
        "warm-up of m at 512x512 failed",
        # No client could ask for these; the operator asked, so the log says which rule rules them out.
        "warm-up of m skips 4096x4096: outside its limits (sides 256-1536, at most 2359296 pixels)",
        "warm-up of m skips 260x260: its sides must be multiples of 8",
        "warm-up of m at 256x256 failed",
    ]


def test_a_failed_preload_is_not_logged_as_ready(caplog: pytest.LogCaptureFixture):
    """The last start-up line an operator reads says the server is not ready, and why to look above."""
    backend = StandInBackend(name="m", steps=1)
    backend.load_fails_with = ModelUnavailableError("weights missing", code="model_weights_missing")
    service = one_model_service(backend)
    engine = service.engine
    app = create_app(Settings(), service, preload=["m"])
    caplog.set_level("INFO", logger="localimg.api.app")
    try:
        asyncio.run(asyncio.wait_for(preload_and_warm_up(AppState.of(app), ["m"]), 20))
    finally:
        engine.close()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "localimg.api.app"]
    assert lines == [("WARNING", "started, but not ready: m could not be loaded (see above); /ready answers 503")]


def test_warm_up_sizes_without_preloaded_models_are_called_out(caplog: pytest.LogCaptureFixture):
    service = one_model_service()
    engine = service.engine
    app = create_app(Settings(warmup_sizes=("512x512",)), service, preload=[])
    caplog.set_level("INFO", logger="localimg.api.app")
    try:
        asyncio.run(asyncio.wait_for(preload_and_warm_up(AppState.of(app), []), 20))
    finally:
        engine.close()
    assert "--warmup has no effect" in caplog.text and "ready: serving m" in caplog.text


class SlowLoadingBackend(StandInBackend):
    def load(self) -> None:
        time.sleep(0.3)
        super().load()


@pytest.mark.parametrize("behind_serve", [False, True])
def test_start_up_waits_for_the_preload_only_behind_serve(behind_serve: bool):
    """A Ray Serve replica gets traffic once its start-up is done, so there start-up waits for the preloaded
    models; the single server starts at once and answers /ready 503 meanwhile."""
    service = one_model_service(SlowLoadingBackend(name="m", steps=1))
    engine = service.engine
    app = create_app(Settings(), service, preload=["m"], behind_serve=behind_serve)

    async def scenario() -> tuple[bool, bool]:
        async with app.router.lifespan_context(app):
            return AppState.of(app).ready, engine.is_loaded("m")

    ready, loaded = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert (ready, loaded) == ((True, True) if behind_serve else (False, False))


def test_health_and_ready_turn_503_once_the_device_has_failed():
    backend = StandInBackend(name="m", steps=1)
    service = one_model_service(backend)
    engine = service.engine
    app = create_app(Settings(), service, preload=[])
    AppState.of(app).ready = True
    message = "The server's device (GPU 0) failed (CUDA error: unspecified launch failure)"

    async def scenario() -> None:
        async with asgi_client(app) as client:
            assert (await client.get("/health")).status_code == 200
            backend.fail_with = DeviceFailedError(message)
            with pytest.raises(DeviceFailedError):
                await engine.generate(plan(1))
            for path in ("/health", "/ready"):
                answer = await client.get(path)
                assert answer.status_code == 503
                assert answer.json() == {"status": "device_failed", "error": message}

    try:
        asyncio.run(asyncio.wait_for(scenario(), 20))
    finally:
        engine.close()


class _LostDeviceMatting:
    """A learned matting that finds the device lost, as `LearnedMatting` reports a sticky CUDA error."""

    def __init__(self, failure: DeviceFailedError) -> None:
        self.failure = failure

    def matte(self, image: Image.Image) -> Image.Image:
        raise self.failure


def test_a_device_lost_while_matting_fails_the_engine_too():
    """The learned matting runs on the device outside the engine's worker: when it finds the device lost, the
    request gets the engine's 503 and the server reports the failure (so it gets restarted) at once, not after
    the next generation fails the same way."""
    message = "The server's device (GPU 0) failed (CUDA error: an illegal memory access was encountered)"
    matting = _LostDeviceMatting(DeviceFailedError(message))
    service = one_model_service(transparency=TransparencyStage(matting))
    engine = service.engine
    app = create_app(Settings(), service, preload=[])
    AppState.of(app).ready = True
    body = {"model": "m", "prompt": "a cat", "size": "1024x1024", "background": "transparent"}

    async def scenario() -> None:
        async with asgi_client(app) as client:
            opaque = await client.post("/v1/images/generations", json={**body, "background": "opaque"})
            assert opaque.status_code == 200
            answer = await client.post("/v1/images/generations", json=body)
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "device_failed"
            assert answer.json()["error"]["message"] == message
            assert (await client.get("/health")).json() == {"status": "device_failed", "error": message}
            refused = await client.post("/v1/images/generations", json={**body, "background": "opaque"})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "device_failed"

    try:
        asyncio.run(asyncio.wait_for(scenario(), 20))
    finally:
        engine.close()
