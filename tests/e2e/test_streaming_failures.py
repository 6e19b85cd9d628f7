"""Failures after a stream has started, and keep-alives, on the in-process server of `failing_server.py`."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from tests.e2e.failing_server import FAILURE_MESSAGE
from tests.e2e.images import decode

PROMPT = "a red circle on a white table"


def test_failure_mid_stream_raises_api_error(failing_root: str):
    client = OpenAI(base_url=f"{failing_root}/v1", api_key="sk-local", max_retries=0, timeout=60)
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
    assert info.value.message == FAILURE_MESSAGE
    assert (info.value.code, info.value.type) == ("injected_failure", "server_error")


def test_sse_framing_and_keep_alives(failing_root: str):
    body = {"model": "tiny-flux", "prompt": PROMPT, "size": "512x512", "stream": True, "num_inference_steps": 1}
    with httpx.stream("POST", f"{failing_root}/v1/images/generations", json=body, timeout=60) as response:
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


def test_error_frame_keeps_all_four_keys(failing_root: str):
    body = {"model": "tiny-flux", "prompt": PROMPT, "size": "256x256", "stream": True, "num_inference_steps": 3}
    with httpx.stream("POST", f"{failing_root}/v1/images/generations", json=body, timeout=60) as response:
        text = response.read().decode()
    error = [frame for frame in text.split("\n\n") if frame.startswith("event: error")]
    assert len(error) == 1 and text.endswith(error[0] + "\n\n"), "the stream ends with the error"
    assert '"error":{"message":"the device failed at step 2","type":"server_error","param":null,' in error[0]
