"""The serving engine end to end: load, batching, back-pressure, fake OOM, API keys, body limit, SIGTERM drain.
The real `localimg serve` on 127.0.0.1 with tiny-sd15 at its smallest size and lowest quality, so a request
costs about one small denoising step."""

from __future__ import annotations

import io
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from PIL import Image

from tests.e2e.conftest import ServerProcess
from tests.e2e.images import check_magic, decode

SMALL = {"model": "tiny-sd15", "size": "64x64", "quality": "low"}
KEY = "sk-test-engine-key"


def generate(client: OpenAI, seed: int, prompt: str = "a red circle", **extra: object) -> object:
    return client.images.generate(prompt=prompt, **SMALL, extra_body={"seed": seed, **extra})


def metric(server: ServerProcess, name: str, headers: dict[str, str] | None = None) -> float:
    text = httpx.get(f"{server.root}/metrics", headers=headers, timeout=10).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if re.match(rf"{name}(\{{| )", line)]
    return sum(values)


@pytest.fixture(scope="module")
def load_server(tiny_models_toml: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tiny_models_toml, "--preload", "tiny-sd15", "--max-queue", "64", "--max-batch", "8", "--inject-oom", "2",
        log_dir=tmp_path_factory.mktemp("load-server"),
    )  # fmt: skip
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_fake_oom_is_recovered_by_splitting(load_server: ServerProcess):
    client = OpenAI(base_url=f"{load_server.root}/v1", api_key="sk-local", max_retries=0, timeout=120)
    result = client.images.generate(prompt="four circles", n=4, **SMALL, extra_body={"seed": 11})
    images = [np.asarray(decode(item.b64_json, "png", (64, 64))) for item in result.data]
    assert len(images) == 4 and not np.array_equal(images[0], images[1])
    log = load_server.log()
    assert log.count("injecting a fake CUDA out-of-memory") == 2
    assert "retrying 1 image(s) per call" in log
    # Each image is the one its seed gives when made alone: the split changed nothing but the call sizes.
    alone = np.asarray(decode(generate(client, 13, "four circles").data[0].b64_json, "png", (64, 64)), dtype=np.int16)
    assert np.abs(alone - images[2].astype(np.int16)).max() <= 2


def test_200_requests_at_concurrency_32_complete_and_are_batched(load_server: ServerProcess):
    client = OpenAI(base_url=f"{load_server.root}/v1", api_key="sk-local", max_retries=0, timeout=300)
    calls_before = metric(load_server, "localimg_backend_calls_total")
    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda seed: generate(client, seed), range(200)))
    elapsed = time.monotonic() - started
    images = [decode(result.data[0].b64_json, "png", (64, 64)) for result in results]
    assert len(images) == 200
    calls = metric(load_server, "localimg_backend_calls_total") - calls_before
    assert calls < 200, f"no request was merged: {calls} backend calls for 200 requests"
    assert metric(load_server, "localimg_batch_images_sum") > metric(load_server, "localimg_batch_images_count")
    # A batched image equals the same seed made alone (per-image generators); tolerance for batched matmuls.
    for seed in (0, 101, 199):
        alone = np.asarray(decode(generate(client, seed).data[0].b64_json), dtype=np.int16)
        assert np.abs(alone - np.asarray(images[seed], dtype=np.int16)).max() <= 2
    print(f"200 requests in {elapsed:.1f} s, {calls:.0f} backend calls")


@pytest.fixture(scope="module")
def guarded_server(tiny_models_toml: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tiny_models_toml, "--preload", "tiny-sd15", "--api-key", KEY, "--max-queue", "2", "--max-body-mb", "1",
        "--batch-window-ms", "0", log_dir=tmp_path_factory.mktemp("guarded-server"),
    )  # fmt: skip
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_full_queue_answers_429_and_the_sdk_retry_succeeds(guarded_server: ServerProcess):
    url = f"{guarded_server.root}/v1/images/generations"
    headers = {"authorization": f"Bearer {KEY}"}
    body = {"prompt": "burst", **SMALL}
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: httpx.post(url, json=body, headers=headers, timeout=120), range(12)))
    refused = [r for r in responses if r.status_code == 429]
    assert refused, "a burst of 12 against --max-queue 2 was never refused"
    assert {r.status_code for r in responses} <= {200, 429}
    for response in refused:
        assert int(response.headers["retry-after"]) >= 1 and int(response.headers["retry-after-ms"]) > 0
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert response.json()["error"]["type"] == "requests"

    # The SDK honours Retry-After (1 s here); admission is first come, so give the slowest caller a long window.
    rejected_before = metric(guarded_server, "localimg_rejected_total", headers)
    assert rejected_before >= len(refused)
    client = OpenAI(base_url=f"{guarded_server.root}/v1", api_key=KEY, max_retries=40, timeout=120)
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda seed: generate(client, seed), range(5)))
    assert all(decode(r.data[0].b64_json, "png", (64, 64)) for r in results)
    assert metric(guarded_server, "localimg_rejected_total", headers) > rejected_before, "the SDK never had to retry"


def test_a_queue_that_stays_full_ends_the_sdk_retries_in_rate_limit_error(guarded_server: ServerProcess):
    client = OpenAI(base_url=f"{guarded_server.root}/v1", api_key=KEY, max_retries=1, timeout=120)
    auth = {"authorization": f"Bearer {KEY}"}

    def queued() -> float:
        return sum(metric(guarded_server, f"localimg_jobs_{state}", auth) for state in ("running", "waiting"))

    # Two streamed jobs far longer than the checks fill --max-queue 2 for as long as the test holds them open; its
    # checks take seconds (the SDK waits Retry-After before each retry), so jobs of a fixed length could end first.
    heavy = {**SMALL, "size": "1024x1024"}
    holders = [
        client.images.generate(prompt="hold", stream=True, **heavy, extra_body={"num_inference_steps": 500})
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while queued() < 2:
            assert time.monotonic() < deadline, "the holding jobs never reached the queue"
            time.sleep(0.05)
        rejected_before = metric(guarded_server, "localimg_rejected_total", auth)
        with pytest.raises(openai.RateLimitError) as info:
            generate(client, 1)  # refused, retried once after Retry-After (1 s), refused again
        assert info.value.status_code == 429 and info.value.code == "rate_limit_exceeded"
        assert metric(guarded_server, "localimg_rejected_total", auth) >= rejected_before + 2, "the SDK did not retry"
        # A stream is refused before its first byte (not with an error event inside a 200), and an upload before
        # its images are decoded: the same 429 the SDK retries.
        with pytest.raises(openai.RateLimitError):
            list(client.images.generate(prompt="stream", stream=True, **SMALL))
        upload = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 30, 30)).save(upload, format="PNG")
        with pytest.raises(openai.RateLimitError):
            client.images.edit(image=upload.getvalue(), prompt="edit", model="tiny-sd15", size="64x64")
        assert queued() == 2, "a holding job ended during the checks"
    finally:
        for holder in holders:
            holder.close()  # the server cancels a job whose client is gone
    deadline = time.monotonic() + 60
    while queued():
        assert time.monotonic() < deadline, "the closed streams' jobs were not cancelled"
        time.sleep(0.1)


def test_wrong_or_missing_key_is_401_invalid_api_key(guarded_server: ServerProcess):
    wrong = OpenAI(base_url=f"{guarded_server.root}/v1", api_key="sk-wrong-key-123456", max_retries=0)
    for call in (lambda: generate(wrong, 1), wrong.models.list):
        with pytest.raises(openai.AuthenticationError) as info:
            call()
        assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
        assert info.value.body["message"].startswith("Incorrect API key provided")  # type: ignore[index]
        assert "sk-wrong-key-123456" not in info.value.message
    missing = httpx.get(f"{guarded_server.root}/v1/models")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{guarded_server.root}/metrics").status_code == 401
    assert httpx.get(f"{guarded_server.root}/health").status_code == 200
    assert httpx.get(f"{guarded_server.root}/ready").status_code == 200
    right = OpenAI(base_url=f"{guarded_server.root}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in right.models.list()]


def test_image_links_open_without_the_key(guarded_server: ServerProcess):
    # Like OpenAI's pre-signed links: apps pass them to browsers and <img src>, which send no Authorization.
    client = OpenAI(base_url=f"{guarded_server.root}/v1", api_key=KEY, max_retries=0, timeout=120)
    result = client.images.generate(model="dall-e-2", prompt="a lighthouse", size="256x256")
    url = result.data[0].url
    assert url and url.startswith(f"{guarded_server.root}/v1/images/files/")
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    check_magic(fetched.content, "png")
    assert Image.open(io.BytesIO(fetched.content)).size == (256, 256)
    head = httpx.head(url)  # what link checkers and proxies send first
    assert head.status_code == 200 and head.headers["content-type"] == "image/png" and head.content == b""
    assert head.headers["content-length"] == str(len(fetched.content))
    guessed = httpx.get(url.rsplit("/", 1)[0] + "/not-an-id.png")
    assert guessed.status_code == 404 and guessed.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_oversized_body_is_413_with_the_envelope(guarded_server: ServerProcess, declared: bool):
    payload = b'{"prompt": "' + b"x" * 1_500_000 + b'"}'
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    content: bytes | Iterator[bytes] = (
        payload if declared else iter([payload[i : i + 65536] for i in range(0, len(payload), 65536)])
    )
    response = httpx.post(f"{guarded_server.root}/v1/images/generations", content=content, headers=headers)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"} and response.headers["x-request-id"]


def test_sigterm_drains_in_flight_refuses_new_and_exits_0(tiny_models_toml: Path, tmp_path: Path):
    server = ServerProcess(tiny_models_toml, "--preload", "tiny-sd15", "--drain-timeout", "120", log_dir=tmp_path)
    try:
        server.wait_ready()
        client = OpenAI(base_url=f"{server.root}/v1", api_key="sk-local", max_retries=0, timeout=300)
        outcome: dict[str, object] = {}

        def slow() -> None:
            try:
                outcome["result"] = client.images.generate(
                    prompt="slow", model="tiny-sd15", size="128x128", n=2,
                    extra_body={"seed": 1, "num_inference_steps": 40},
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - asserted below
                outcome["error"] = exc

        thread = threading.Thread(target=slow)
        thread.start()
        deadline = time.monotonic() + 60
        while metric(server, "localimg_jobs_running") < 1:
            assert time.monotonic() < deadline, "the slow job never started"
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.root}/ready").status_code != 503:
            assert time.monotonic() < deadline, "/ready never turned 503 after SIGTERM"
            time.sleep(0.05)
        refused = httpx.post(f"{server.root}/v1/images/generations", json={"prompt": "late", **SMALL}, timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_shutting_down"
        assert "retry-after" in refused.headers
        thread.join(120)
        assert "error" not in outcome, outcome.get("error")
        result = outcome["result"]
        assert [decode(item.b64_json, "png", (128, 128)).size for item in result.data] == [(128, 128)] * 2  # type: ignore[attr-defined]
        assert server.process.wait(60) == 0
    finally:
        server.stop()


def test_a_second_signal_exits_at_once(tiny_models_toml: Path, tmp_path: Path):
    server = ServerProcess(tiny_models_toml, "--preload", "tiny-sd15", "--drain-timeout", "300", log_dir=tmp_path)
    try:
        server.wait_ready()
        body = {"prompt": "endless", **SMALL, "size": "512x512", "n": 4, "num_inference_steps": 500}
        answers: list[httpx.Response] = []
        client = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{server.root}/v1/images/generations", json=body, timeout=300)),
            daemon=True,
        )
        client.start()
        deadline = time.monotonic() + 60
        while metric(server, "localimg_jobs_running") < 1:
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        server.process.send_signal(signal.SIGINT)  # drains: would wait for the job, for up to 300 s
        time.sleep(1)
        assert server.process.poll() is None
        server.process.send_signal(signal.SIGINT)
        server.process.wait(20)
        log = server.log_path.read_text()
        assert "exiting now, abandoning 1 job(s)" in log
        assert "Application shutdown complete" in log and "Traceback" not in log
        # The abandoned client is told, in OpenAI's envelope, with a status its SDK retries (elsewhere).
        client.join(10)
        assert answers and answers[0].status_code == 503
        assert answers[0].json()["error"]["code"] == "server_shutting_down"
    finally:
        server.stop()


def test_non_loopback_host_without_a_key_is_refused(tiny_models_toml: Path):
    from tests.e2e.test_operator import localimg

    result = localimg("serve", "--config", str(tiny_models_toml), "--host", "0.0.0.0", "--device", "cpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "--insecure" in result.stderr and "--api-key" in result.stderr
