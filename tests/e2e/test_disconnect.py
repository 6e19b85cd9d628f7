"""A client that gives up on a non-streaming request frees the worker: its job stops at the next step."""

from __future__ import annotations

import time

import httpx
import pytest
from openai import OpenAI

from tests.e2e.conftest import ServerProcess

LONG = {"model": "tiny-flux", "prompt": "a long job", "size": "1024x1024"}


def test_a_disconnected_request_is_cancelled(server: ServerProcess, client: OpenAI):
    url = f"{server.root}/v1/images/generations"
    started = time.monotonic()
    httpx.post(url, json={**LONG, "num_inference_steps": 2}, timeout=120).raise_for_status()
    two_steps = time.monotonic() - started  # one short job, HTTP and encoding included

    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        httpx.post(url, json={**LONG, "num_inference_steps": 200}, timeout=max(1.0, two_steps))
    client.images.generate(model="tiny-sd15", prompt="next", size="64x64", quality="low")
    waited = time.monotonic() - started
    # The abandoned job alone would take about 100 times `two_steps`; the next request ran long before that.
    assert waited < 5 + 20 * two_steps, (waited, two_steps)
    deadline = time.monotonic() + 10
    while "client disconnected; cancelling its job" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "client disconnected; cancelling its job" in server.log()
