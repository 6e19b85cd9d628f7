"""POST /v1/images/generations through the official `openai` SDK, against the real server and tiny models."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.e2e.images import check_magic, decode

PROMPT = "a red circle on a white table"


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd15", "tiny-sdxl", "tiny-sd3"])
def test_every_family_generates(client: OpenAI, model: str):
    result = client.images.generate(model=model, prompt=PROMPT, size="512x512")
    assert isinstance(result.created, int) and len(result.data) == 1
    image = decode(result.data[0].b64_json, "png", (512, 512))
    assert image.mode == "RGB"
    assert np.asarray(image).std() > 1.0, "a flat image means the pipeline produced nothing"
    assert result.data[0].url is None
    assert (result.size, result.quality, result.background, result.output_format) == (
        "512x512",
        "medium",
        "opaque",
        "png",
    )
    assert result.usage.input_tokens > 0 and result.usage.input_tokens_details.text_tokens == result.usage.input_tokens
    assert result.usage.output_tokens == 32 * 32
    assert result.usage.total_tokens == result.usage.input_tokens + result.usage.output_tokens


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("1024x1024", (1024, 1024)),
        ("1536x1024", (1536, 1024)),
        ("1024x1536", (1024, 1536)),
        ("auto", (1024, 1024)),
        ("768x336", (768, 336)),
    ],
)
def test_sizes(client: OpenAI, size: str, expected: tuple[int, int]):
    result = client.images.generate(model="tiny-flux", prompt=PROMPT, size=size)
    decode(result.data[0].b64_json, "png", expected)
    assert result.size == f"{expected[0]}x{expected[1]}"


def test_default_model_and_size_when_omitted(client: OpenAI):
    result = client.images.generate(prompt=PROMPT)
    decode(result.data[0].b64_json, "png", (1024, 1024))
    assert result.size == "1024x1024"


@pytest.mark.parametrize("n", [1, 3])
def test_n_images(client: OpenAI, n: int):
    result = client.images.generate(model="tiny-sd15", prompt=PROMPT, n=n, size="256x256", extra_body={"seed": 5})
    assert len(result.data) == n
    images = [np.asarray(decode(item.b64_json, "png", (256, 256))) for item in result.data]
    assert all(not np.array_equal(images[0], other) for other in images[1:]), "each image has its own seed"
    assert result.usage.output_tokens == n * 16 * 16


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_output_formats(client: OpenAI, fmt: str):
    result = client.images.generate(model="tiny-flux", prompt=PROMPT, size="1536x1024", output_format=fmt)
    decode(result.data[0].b64_json, fmt, (1536, 1024))
    assert result.output_format == fmt


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_compression_changes_file_size(client: OpenAI, fmt: str):
    def size_at(compression: int) -> int:
        result = client.images.generate(
            model="tiny-sd15",
            prompt=PROMPT,
            size="512x512",
            output_format=fmt,
            output_compression=compression,
            extra_body={"seed": 3},
        )
        return len(base64.b64decode(result.data[0].b64_json))

    assert size_at(10) < size_at(95)


def test_seed_determinism(client: OpenAI):
    def image(seed: int) -> str:
        return client.images.generate(model="tiny-sdxl", prompt=PROMPT, size="512x512", extra_body={"seed": seed})

    first, again, other = image(42), image(42), image(43)
    assert first.data[0].b64_json == again.data[0].b64_json
    assert first.data[0].b64_json != other.data[0].b64_json


def test_image_i_of_n_equals_single_image_with_seed_plus_i(client: OpenAI):
    batch = client.images.generate(model="tiny-sd3", prompt=PROMPT, size="256x256", n=3, extra_body={"seed": 10})
    single = client.images.generate(model="tiny-sd3", prompt=PROMPT, size="256x256", extra_body={"seed": 12})
    a = np.asarray(decode(batch.data[2].b64_json)).astype(int)
    b = np.asarray(decode(single.data[0].b64_json)).astype(int)
    assert np.abs(a - b).max() <= 2  # batched and single convolutions may round differently


@pytest.mark.parametrize(
    ("quality", "resolved"), [("low", "low"), ("medium", "medium"), ("high", "high"), ("auto", "medium")]
)
def test_quality_is_echoed_resolved(client: OpenAI, quality: str, resolved: str):
    result = client.images.generate(model="tiny-flux", prompt=PROMPT, size="256x256", quality=quality)
    assert result.quality == resolved


def test_an_app_written_for_gpt_image_2_5_keeps_working(client: OpenAI):
    """Its model names, its `complexity` (no effect here) and its levels above high, which run more steps."""
    images = {}
    for quality in ("high", "xhigh", "max"):
        result = client.images.generate(
            model="gpt-image-2.5-flare", prompt=PROMPT, size="256x256", quality=quality, complexity="high",
            extra_body={"seed": 5},
        )  # fmt: skip
        assert result.quality == quality
        images[quality] = np.asarray(decode(result.data[0].b64_json, "png", (256, 256)), dtype=np.int16)
    assert np.abs(images["xhigh"] - images["high"]).max() > 0 and np.abs(images["max"] - images["xhigh"]).max() > 0


def test_extensions_pass_through_extra_body(client: OpenAI):
    result = client.images.generate(
        model="tiny-sd15",
        prompt=PROMPT,
        size="256x256",
        extra_body={"seed": 1, "negative_prompt": "blurry", "num_inference_steps": 1, "guidance_scale": 2.0},
    )
    decode(result.data[0].b64_json, "png", (256, 256))


def test_explicit_nones_mean_not_given(client: OpenAI):
    result = client.images.generate(model="tiny-flux", prompt=PROMPT, quality=None, n=None, size=None)
    assert len(result.data) == 1 and result.quality == "medium" and result.size == "1024x1024"


@pytest.mark.parametrize("alias", ["gpt-image-2", "gpt-image-1.5", "gpt-image-1"])
def test_gpt_image_aliases(client: OpenAI, alias: str):
    result = client.images.generate(model=alias, prompt=PROMPT, size="1024x1536")
    decode(result.data[0].b64_json, "png", (1024, 1536))
    assert result.quality == "medium" and result.usage is not None


def test_dalle3_url_response(client: OpenAI):
    result = client.images.generate(model="dall-e-3", prompt=PROMPT, response_format="url", style="natural")
    assert result.data[0].b64_json is None and result.data[0].revised_prompt == PROMPT
    response = httpx.get(result.data[0].url, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    check_magic(response.content, "png")
    assert result.usage is None and result.size is None  # DALL·E responses carry only created + data


def test_a_local_model_name_takes_response_format(client: OpenAI):
    """Clients made for OpenAI-compatible servers (the AI SDK's) send response_format to every model."""
    result = client.images.generate(model="tiny-flux", prompt=PROMPT, size="256x256", response_format="b64_json")
    decode(result.data[0].b64_json, "png", (256, 256))
    result = client.images.generate(model="tiny-flux", prompt=PROMPT, size="256x256", response_format="url")
    response = httpx.get(result.data[0].url, timeout=30)
    decode(base64.b64encode(response.content).decode(), "png", (256, 256))
    assert result.usage is not None and result.size == "256x256"  # still answered in the gpt-image shape


def test_dalle3_defaults_to_url(client: OpenAI):
    result = client.images.generate(model="dall-e-3", prompt=PROMPT)
    response = httpx.get(result.data[0].url, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    decode(base64.b64encode(response.content).decode(), "png", (1024, 1024))
    # Cached no longer than the URL lives (the default --url-ttl: an hour, as OpenAI's URLs).
    assert 3590 <= int(response.headers["cache-control"].split("max-age=")[1]) <= 3600


def test_dalle2_b64(client: OpenAI):
    result = client.images.generate(model="dall-e-2", prompt=PROMPT, response_format="b64_json", size="256x256", n=2)
    assert len(result.data) == 2
    decode(result.data[0].b64_json, "png", (256, 256))


def test_expired_or_unknown_image_url_is_404(server):
    response = httpx.get(f"{server.root}/v1/images/files/nope.png", timeout=10)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_base_url_without_v1_prefix(server):
    bare = OpenAI(base_url=server.root, api_key="sk-local", max_retries=0)
    result = bare.images.generate(model="tiny-flux", prompt=PROMPT, size="256x256")
    decode(result.data[0].b64_json, "png", (256, 256))


def test_raw_response_has_request_id(client: OpenAI):
    raw = client.images.with_raw_response.generate(model="tiny-flux", prompt=PROMPT, size="256x256")
    assert raw.headers["x-request-id"].startswith("req_")
    assert len(raw.parse().data) == 1


@pytest.mark.anyio
async def test_async_client(server):
    async with openai.AsyncOpenAI(base_url=f"{server.root}/v1", api_key="sk-local", max_retries=0) as client:
        result = await client.images.generate(model="tiny-sd15", prompt=PROMPT, size="256x256")
    decode(result.data[0].b64_json, "png", (256, 256))
