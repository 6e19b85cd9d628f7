"""localimg on Ray Serve: `serve run` with a Serve config file naming `localimg.ray_serve:app`, two CPU replicas
of tiny-flux behind Serve's proxy, driven by the official SDK."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import APIConnectionError, APIStatusError, BadRequestError, OpenAI
from PIL import Image

from tests.e2e.conftest import STARTUP_TIMEOUT_S, free_port
from tests.e2e.images import check_magic, decode
from tests.e2e.ready import wait_until_ok

REPLICAS = 2


@pytest.fixture(scope="module")
def ray_root(tiny_models_toml: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("ray-serve")
    port = free_port()
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "localimg",
                "route_prefix": "/",
                "import_path": "localimg.ray_serve:app",
                "args": {
                    "config": str(tiny_models_toml),
                    "device": "cpu",
                    "models": "tiny-flux",
                    "preload": "all",
                    "replicas": REPLICAS,
                    "cpus-per-replica": 0.5,
                },
            }
        ],
    }
    config_path = workdir / "serve.yaml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    log_path = workdir / "serve.log"
    # The hidden fault flag, as a variable (the builder refuses hidden options): only a marked prompt triggers it.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", "LOCALIMG_INJECT_DEVICE_FAILURE": "1"}
    serve_cli = Path(sys.executable).with_name("serve")
    with log_path.open("w") as log:
        # A Ray cluster of its own (`--address local`: never a developer's running one), in a process group of
        # its own, so that nothing of it (GCS, raylet, workers) outlives the test.
        command = [str(serve_cli), "run", "--address", "local", str(config_path)]
        process = subprocess.Popen(
            command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

        def check_alive() -> None:
            if process.poll() is not None:
                raise RuntimeError(f"serve run exited with {process.returncode}:\n{log_path.read_text()[-5000:]}")

        root = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_until_ok(f"{root}/ready", timeout_s=STARTUP_TIMEOUT_S, check_alive=check_alive)
            except RuntimeError as exc:  # e.g. the application failed to deploy: `serve run` logs it and waits
                raise RuntimeError(f"{exc}:\n{log_path.read_text()[-5000:]}") from None
            yield root
        finally:
            process.send_signal(signal.SIGINT)  # serve run shuts Serve and its Ray cluster down
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
            with contextlib.suppress(ProcessLookupError):  # whatever is left of the cluster
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_client(ray_root: str) -> OpenAI:
    return OpenAI(base_url=f"{ray_root}/v1", api_key="sk-local", max_retries=0, timeout=120)


def test_generation_through_the_proxy(ray_client: OpenAI) -> None:
    result = ray_client.images.generate(model="tiny-flux", prompt="a lighthouse", size="256x256", n=2)
    assert len(result.data) == 2
    for item in result.data:
        decode(item.b64_json, "png", (256, 256))
    assert result.usage is not None and result.usage.output_tokens > 0


def test_streamed_partial_images(ray_client: OpenAI) -> None:
    stream = ray_client.images.generate(
        model="gpt-image-2", prompt="a lighthouse", size="256x256", output_format="jpeg", stream=True, partial_images=2
    )
    events = list(stream)
    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    decode(events[-1].b64_json, "jpeg", (256, 256))


def test_image_links_work_from_every_replica(ray_client: OpenAI, ray_root: str) -> None:
    """The link's GET reaches any replica (Serve picks one of two at random each time), not only the one that
    made the image: ten fetches all succeed only if the store is shared (an unshared one fails ~half of them)."""
    result = ray_client.images.generate(model="dall-e-2", prompt="a lighthouse", size="256x256")
    url = result.data[0].url
    assert url is not None and url.startswith(f"{ray_root}/v1/images/files/")
    bodies = set()
    for _ in range(10):
        response = httpx.get(url, timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        bodies.add(response.content)
    assert len(bodies) == 1
    (body,) = bodies
    check_magic(body, "png")
    assert Image.open(io.BytesIO(body)).size == (256, 256)


def test_edit_upload_through_the_proxy(ray_client: OpenAI) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 320), (200, 40, 40)).save(buffer, format="PNG")
    result = ray_client.images.edit(
        model="gpt-image-2", image=("red.png", buffer.getvalue(), "image/png"), prompt="make it blue", size="256x256"
    )
    decode(result.data[0].b64_json, "png", (256, 256))


def test_errors_keep_openais_shape(ray_client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as caught:
        ray_client.images.generate(model="tiny-flux", prompt="a lighthouse", size="100x100")
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "size"  # type: ignore[index]
    # One id, the proxy's, which the replica's log lines carry too (not "req_…, <Serve's uuid>").
    assert caught.value.response.headers.get_list("x-request-id") == [caught.value.request_id]


def test_metrics_and_health_answer(ray_root: str) -> None:
    assert httpx.get(f"{ray_root}/health", timeout=10).json() == {"status": "ok"}
    metrics = httpx.get(f"{ray_root}/metrics", timeout=10)
    assert metrics.status_code == 200 and "localimg_" in metrics.text


def test_b64_payload_survives_the_proxy_intact(ray_client: OpenAI) -> None:
    """Serve's proxy forwards bodies in chunks: a large response arrives whole and decodable."""
    result = ray_client.images.generate(model="tiny-flux", prompt="noise", size="1024x1024", output_format="png")
    data = base64.b64decode(result.data[0].b64_json or "")
    check_magic(data, "png")
    assert Image.open(io.BytesIO(data)).size == (1024, 1024)


def test_a_replica_whose_device_fails_is_replaced_at_once(ray_client: OpenAI) -> None:
    """Last in this module: it kills a replica. The failed replica ends its process and the other one serves
    everything while Serve starts a fresh one. Left to Serve's health checks (three failures, 30 s) the failed
    one would keep answering 503s, and fastest, so ten successes in a row within 20 s would be out of reach."""
    from localimg.testing.faults import DEVICE_FAILURE_PROMPT

    with pytest.raises(APIStatusError) as info:
        ray_client.images.generate(model="tiny-flux", prompt=f"a {DEVICE_FAILURE_PROMPT}", size="256x256")
    assert info.value.status_code == 503 and info.value.code == "device_failed"
    started = time.monotonic()
    in_a_row = 0
    while in_a_row < 10:
        assert time.monotonic() - started < 20, "the failed replica kept taking requests"
        try:
            decode(ray_client.images.generate(model="tiny-flux", prompt="a", size="256x256").data[0].b64_json)
            in_a_row += 1
        except (APIStatusError, APIConnectionError):
            in_a_row = 0
            time.sleep(0.2)
