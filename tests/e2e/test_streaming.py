"""Streaming (`stream=True`) through the official `openai` SDK, sync and async, against the real server."""

from __future__ import annotations

import time

import numpy as np
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.e2e.conftest import ServerProcess
from tests.e2e.images import decode

PROMPT = "a red circle on a white table"
PARTIAL = "image_generation.partial_image"
COMPLETED = "image_generation.completed"


def distance(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


@pytest.mark.parametrize(("partial_images", "fmt"), [(0, "png"), (1, "jpeg"), (3, "webp")])
def test_partial_images(client: OpenAI, partial_images: int, fmt: str):
    stream = client.images.generate(
        model="tiny-flux", prompt=PROMPT, size="512x256", output_format=fmt, stream=True, partial_images=partial_images
    )
    events = list(stream)
    assert [event.type for event in events] == [PARTIAL] * partial_images + [COMPLETED]
    assert [event.partial_image_index for event in events[:-1]] == list(range(partial_images))
    images = [decode(event.b64_json, fmt, (512, 256)) for event in events]
    assert all(image.mode == "RGB" for image in images)
    for event in events:  # stream events echo the requested settings: "auto" when not given
        assert (event.size, event.quality, event.background, event.output_format) == ("512x256", "auto", "auto", fmt)
        assert isinstance(event.created_at, int) and event.created_at > 1_700_000_000
    completed = events[-1]
    assert completed.usage.output_tokens == 32 * 16 and completed.usage.input_tokens > 0
    assert completed.usage.total_tokens == completed.usage.input_tokens + completed.usage.output_tokens
    if partial_images > 1:
        final = images[-1]
        assert distance(images[-2], final) < distance(images[0], final), "previews must approach the final image"


@pytest.mark.anyio
async def test_async_stream_converges(server: ServerProcess):
    async with AsyncOpenAI(base_url=f"{server.root}/v1", api_key="sk-local", max_retries=0, timeout=120) as client:
        stream = await client.images.generate(
            model="tiny-sd3", prompt=PROMPT, size="256x256", quality="high", stream=True, partial_images=2,
            extra_body={"num_inference_steps": 6, "seed": 3},
        )  # fmt: skip
        events = [event async for event in stream]
    assert [event.type for event in events] == [PARTIAL, PARTIAL, COMPLETED]
    assert events[0].quality == "high"
    images = [decode(event.b64_json, "png", (256, 256)) for event in events]
    assert distance(images[1], images[2]) < distance(images[0], images[2])


def test_n_images_stream_image_by_image(client: OpenAI):
    streamed = list(
        client.images.generate(
            model="tiny-sd15", prompt=PROMPT, size="256x256", n=2, stream=True, partial_images=2,
            extra_body={"seed": 11, "num_inference_steps": 3},
        )
    )  # fmt: skip
    assert [event.type for event in streamed] == [PARTIAL, PARTIAL, COMPLETED] * 2
    assert [getattr(event, "partial_image_index", None) for event in streamed] == [0, 1, None] * 2
    whole = client.images.generate(
        model="tiny-sd15", prompt=PROMPT, size="256x256", n=2, extra_body={"seed": 11, "num_inference_steps": 3}
    )
    finals = [streamed[2].b64_json, streamed[5].b64_json]
    assert finals == [item.b64_json for item in whole.data], "image i of the stream is image i of the response"
    # Each image's previews lead to that image, not to the other one.
    first_preview_of_second = decode(streamed[4].b64_json)
    assert distance(first_preview_of_second, decode(finals[1])) < distance(first_preview_of_second, decode(finals[0]))
    usages = [streamed[2].usage, streamed[5].usage]
    assert sum(u.output_tokens for u in usages) == whole.usage.output_tokens
    assert sum(u.input_tokens for u in usages) == whole.usage.input_tokens
    assert sum(u.total_tokens for u in usages) == whole.usage.total_tokens


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd15", "tiny-sdxl", "tiny-sd3"])
def test_every_family_streams_converging_previews(client: OpenAI, model: str):
    events = list(
        client.images.generate(
            model=model, prompt=PROMPT, size="256x256", stream=True, partial_images=3, extra_body={"seed": 2}
        )
    )
    assert [event.type for event in events] == [PARTIAL] * 3 + [COMPLETED]
    images = [decode(event.b64_json, "png", (256, 256)) for event in events]
    assert np.asarray(images[0]).std() > 1.0, "a flat preview shows nothing"
    assert distance(images[2], images[3]) < distance(images[0], images[3])


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"size": "13x13"}, "size"),
        ({"partial_images": 5}, "partial_images"),
        ({"background": "transparent", "output_format": "jpeg"}, "background"),
        ({"model": "dall-e-3"}, "stream"),
        ({"quality": "ultra"}, "quality"),
    ],
)
def test_invalid_stream_requests_fail_at_call_time(client: OpenAI, fields: dict, param: str):
    fields.setdefault("model", "tiny-flux")
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt=PROMPT, stream=True, **fields)
    assert info.value.status_code == 400 and info.value.param == param


def test_disconnect_frees_the_worker(client: OpenAI, server: ServerProcess):
    steps, partials = 24, 3  # previews after steps 6, 12 and 18
    started = time.monotonic()
    stream = client.images.generate(
        model="tiny-flux", prompt=PROMPT, size="1024x1024", stream=True, partial_images=partials,
        extra_body={"num_inference_steps": steps},
    )  # fmt: skip
    first = next(iter(stream))
    assert first.type == PARTIAL
    to_first_preview = time.monotonic() - started  # about 6 steps (and one preview)
    stream.close()

    started = time.monotonic()
    result = client.images.generate(model="tiny-flux", prompt=PROMPT, size="256x256", quality="low")
    waited = time.monotonic() - started
    decode(result.data[0].b64_json, "png", (256, 256))
    # The abandoned job had 18 steps and two previews left, about 3x what it took to reach the first preview.
    assert waited < to_first_preview, (waited, to_first_preview)
    assert "client disconnected mid-stream" in server.log()
