"""Failures after a stream has started, and keep-alives, on an in-process server whose backend fails on purpose.

The server runs in this process (uvicorn in a thread, built with `create_app`) so that a failing backend can be
injected without a hidden flag in the real one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from openai import OpenAI

from localimg.api.app import create_app
from localimg.backends.base import GenerationPlan, StepCallback, StepProgress
from localimg.backends.device import resolve_device
from localimg.backends.diffusers_backend import DiffusersBackend
from localimg.config import Settings
from localimg.errors import GenerationError
from localimg.registry import Registry
from localimg.service.engine import Engine
from localimg.service.image_store import ImageStore
from localimg.service.images import ImageService
from tests.e2e.conftest import free_port
from tests.e2e.images import decode

PROMPT = "a red circle on a white table"


class FailingAtStep2(DiffusersBackend):
    """The real tiny pipeline, failing after its second denoising step."""

    def generate(self, batch: Sequence[GenerationPlan], on_step: StepCallback | None = None):
        def step(progress: StepProgress) -> None:
            if progress.step == 2:
                raise GenerationError("the device failed at step 2", code="injected_failure")
            if on_step is not None:
                on_step(progress)

        return super().generate(batch, step)


@pytest.fixture(scope="module")
def root(tiny_models_toml: Path) -> Iterator[str]:
    registry = Registry.load(tiny_models_toml).restricted_to(["tiny-flux"])
    device = resolve_device("cpu")
    engine = Engine({spec.name: FailingAtStep2(spec, device) for spec in registry})
    service = ImageService(registry, engine, ImageStore(ttl_s=60))
    port = free_port()
    app = create_app(Settings(config=tiny_models_toml, port=port, sse_keepalive_s=0.05), service, ["tiny-flux"])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_failure_mid_stream_raises_api_error(root: str):
    client = OpenAI(base_url=f"{root}/v1", api_key="sk-local", max_retries=0, timeout=60)
    stream = client.images.generate(
        model="tiny-flux", prompt=PROMPT, size="256x256", stream=True, partial_images=3,
        extra_body={"num_inference_steps": 4},
    )  # fmt: skip
    seen = []
    with pytest.raises(openai.APIError) as info:
        for event in stream:
            seen.append(event)
    assert [event.type for event in seen] == ["image_generation.partial_image"]  # after step 1 of 4; step 2 fails
    decode(seen[0].b64_json, "png", (256, 256))
    assert not isinstance(info.value, openai.APIStatusError)
    assert info.value.message == "the device failed at step 2"
    assert (info.value.code, info.value.type) == ("injected_failure", "server_error")


def test_sse_framing_and_keep_alives(root: str):
    body = {"model": "tiny-flux", "prompt": PROMPT, "size": "512x512", "stream": True, "num_inference_steps": 1}
    with httpx.stream("POST", f"{root}/v1/images/generations", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache" and response.headers["x-accel-buffering"] == "no"
        assert response.headers["x-request-id"].startswith("req_")
        text = response.read().decode()
    frames = text.split("\n\n")
    assert frames[-1] == "" and ": keep-alive" in frames, "a 0.05 s keep-alive must fire while the job runs"
    events = [frame for frame in frames if frame.startswith("event:")]
    assert len(events) == 1
    name, data = events[0].split("\n")
    assert name == "event: image_generation.completed"
    assert data.startswith('data: {"') and '"type":"image_generation.completed"' in data


def test_error_frame_keeps_all_four_keys(root: str):
    body = {"model": "tiny-flux", "prompt": PROMPT, "size": "256x256", "stream": True, "num_inference_steps": 3}
    with httpx.stream("POST", f"{root}/v1/images/generations", json=body, timeout=60) as response:
        text = response.read().decode()
    error = [frame for frame in text.split("\n\n") if frame.startswith("event: error")]
    assert len(error) == 1 and text.endswith(error[0] + "\n\n"), "the stream ends with the error"
    assert '"error":{"message":"the device failed at step 2","type":"server_error","param":null,' in error[0]
