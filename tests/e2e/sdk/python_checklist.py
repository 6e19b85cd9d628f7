"""The spec's compatibility checklist (section 8) as one script, run by `test_sdk_versions.py` under each
openai-python version it installs: `python python_checklist.py ROOT FAILING_ROOT IMAGE MASK` prints one JSON
object of observations (or `{"call": "error: ..."}` for a call that raised unexpectedly); the test asserts.

It uses only API that every SDK from 1.97.0 (the first with image streaming) on has, and nothing from the
repository: the point is what each SDK, by itself, makes of the server.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
import traceback
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
from openai import AsyncOpenAI, OpenAI
from PIL import Image

MODEL = "gpt-image-1"  # an alias of the tiny default model


def size_of(b64: str) -> list[Any]:
    data = base64.b64decode(b64)
    image = Image.open(io.BytesIO(data))
    return [data[:4].hex(), f"{image.width}x{image.height}", image.mode]


def error_of(exc: Exception) -> dict[str, Any]:
    return {
        "class": type(exc).__name__,
        "status": getattr(exc, "status_code", None),
        "code": getattr(exc, "code", None),
        "param": getattr(exc, "param", None),
        "message": getattr(exc, "message", str(exc)),
    }


def main(root: str, failing_root: str, image_path: str, mask_path: str) -> dict[str, Any]:
    client = OpenAI(base_url=f"{root}/v1", api_key="sk-local", max_retries=0, timeout=120)
    image = Path(image_path).read_bytes()
    results: dict[str, Any] = {"version": openai.__version__}

    def check(name: str, call: Callable[[], Any]) -> None:
        try:
            results[name] = call()
        except openai.APIError as exc:
            results[name] = error_of(exc)
        except Exception:
            results[name] = "error: " + traceback.format_exc(limit=3)

    def generate() -> dict[str, Any]:
        response = client.images.generate(model=MODEL, prompt="a red circle", n=2, size="1536x1024", quality=None)
        return {
            "images": [size_of(item.b64_json) for item in response.data],
            "url": response.data[0].url,
            "created": isinstance(response.created, int),
            "total_tokens": response.usage.total_tokens if response.usage else None,
        }

    def url() -> list[Any]:
        response = client.images.generate(model="dall-e-3", prompt="x", response_format="url", size="1024x1024")
        with urllib.request.urlopen(response.data[0].url, timeout=30) as fetched:
            return [response.data[0].b64_json, size_of(base64.b64encode(fetched.read()).decode())]

    def stream() -> list[Any]:
        events = client.images.generate(model=MODEL, prompt="x", size="512x512", stream=True, partial_images=2)
        return [[event.type, getattr(event, "partial_image_index", None), size_of(event.b64_json)] for event in events]

    async def async_stream() -> list[Any]:
        aclient = AsyncOpenAI(base_url=f"{root}/v1", api_key="sk-local", max_retries=0, timeout=120)
        events = await aclient.images.generate(model=MODEL, prompt="x", size="512x512", stream=True, partial_images=1)
        return [[event.type, size_of(event.b64_json)] async for event in events]

    def edit_list() -> list[Any]:
        files = [("a.png", image, "image/png"), ("b.png", image, "image/png")]
        response = client.images.edit(model=MODEL, image=files, prompt="x")
        return [size_of(item.b64_json) for item in response.data]

    def edit_mask() -> list[Any]:
        with open(image_path, "rb") as file, open(mask_path, "rb") as mask:
            response = client.images.edit(image=file, mask=mask, prompt="x", n=2, input_fidelity="high")
        return [size_of(item.b64_json) for item in response.data]

    def edit_stream() -> list[Any]:
        events = client.images.edit(image=image, prompt="x", stream=True, partial_images=1)
        return [[event.type, size_of(event.b64_json)] for event in events]

    def mid_stream_failure() -> Any:
        failing = OpenAI(base_url=f"{failing_root}/v1", api_key="sk-local", max_retries=0, timeout=120)
        events = failing.images.generate(
            model="tiny-flux", prompt="x", size="256x256", stream=True, extra_body={"num_inference_steps": 3}
        )
        return [event.type for event in events]

    check("generate", generate)
    check("url", url)
    check("stream", stream)
    check("async_stream", lambda: asyncio.run(async_stream()))
    check("edit_list", edit_list)
    check("edit_bytes", lambda: size_of(client.images.edit(image=image, prompt="x").data[0].b64_json))
    check("edit_mask", edit_mask)
    check("edit_stream", edit_stream)
    check("variation", lambda: len(client.images.create_variation(image=image, n=2).data))
    check("request_id", lambda: "x-request-id" in client.images.with_raw_response.generate(prompt="x").headers)
    check("models", lambda: sorted({model.object for model in client.models.list()}))
    check("model_missing", lambda: client.models.retrieve("no-such-model"))
    check("bad_n", lambda: client.images.generate(prompt="x", n=0))
    check("bad_stream", lambda: list(client.images.generate(prompt="x", stream=True, size="bogus")))
    check("mid_stream_failure", mid_stream_failure)
    return results


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5])))
