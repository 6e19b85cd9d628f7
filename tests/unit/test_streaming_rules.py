"""Pure streaming rules: which steps get previews, how usage is split, SSE frames, and the planning of streams."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localimg.api.sse import KEEP_ALIVE_FRAME, error_event, names_events_for, sse_frame
from localimg.errors import GenerationError, InvalidRequestError
from localimg.protocol import (
    ImageEditPartialImageEvent,
    ImageGenerateRequest,
    ImageGenerationCompletedEvent,
    InputTokensDetails,
    OutputTokensDetails,
    Usage,
)
from localimg.registry import Registry
from localimg.service.planning import plan_generation
from localimg.service.streaming import preview_steps, split_usage

REGISTRY = Registry.from_dict(
    {
        "default_model": "flux",
        "models": {
            "flux": {
                "family": "flux",
                "source": {"path": "/nowhere/flux"},
                "aliases": ["gpt-image-1", "dall-e-2", "dall-e-3"],
                "quality": {"auto": "medium", "low": {"steps": 1}, "medium": {"steps": 4}, "high": {"steps": 28}},
            },
        },
    },
    base_dir=Path("/"),
)


@pytest.mark.parametrize(
    ("steps", "partial_images", "expected"),
    [
        (28, 0, ()),
        (28, 1, (14,)),
        (28, 3, (7, 14, 21)),
        (4, 3, (1, 2, 3)),
        (2, 1, (1,)),
        (10, 2, (3, 6)),
        (3, 3, (1, 2)),  # too few steps: fewer previews, never the last step
        (1, 2, ()),
    ],
)
def test_preview_steps(steps: int, partial_images: int, expected: tuple[int, ...]):
    assert preview_steps(steps, partial_images) == expected


@pytest.mark.parametrize("steps", range(1, 60))
@pytest.mark.parametrize("partial_images", range(4))
def test_preview_steps_are_distinct_and_before_the_last(steps: int, partial_images: int):
    chosen = preview_steps(steps, partial_images)
    assert list(chosen) == sorted(set(chosen)) and all(1 <= step < steps for step in chosen)
    assert len(chosen) == min(partial_images, steps - 1)


def usage(input_tokens: int, output_tokens: int) -> Usage:
    return Usage(
        input_tokens=input_tokens,
        input_tokens_details=InputTokensDetails(text_tokens=input_tokens, image_tokens=0),
        output_tokens=output_tokens,
        output_tokens_details=OutputTokensDetails(text_tokens=0, image_tokens=output_tokens),
        total_tokens=input_tokens + output_tokens,
    )


@pytest.mark.parametrize("n", [1, 2, 3, 10])
def test_split_usage_adds_up(n: int):
    whole = usage(7, 4096 * n + 1)
    parts = split_usage(whole, n)
    assert len(parts) == n
    for field in ("input_tokens", "output_tokens", "total_tokens"):
        assert sum(getattr(part, field) for part in parts) == getattr(whole, field)
    assert sum(p.output_tokens_details.image_tokens for p in parts) == whole.output_tokens_details.image_tokens
    assert parts[0].input_tokens == 7 and all(part.input_tokens == 0 for part in parts[1:])
    assert all(part.total_tokens == part.input_tokens + part.output_tokens for part in parts)


def test_sse_frame_is_event_line_plus_one_line_json():
    event = ImageEditPartialImageEvent(
        b64_json="AAAA", partial_image_index=2, created_at=1700000000, size="auto", quality="auto",
        background="opaque", output_format="webp",
    )  # fmt: skip
    frame = sse_frame(event)
    assert frame.endswith(b"\n\n") and frame.count(b"\n") == 3
    name, data = frame.decode().rstrip("\n").split("\n")
    assert name == "event: image_edit.partial_image"
    assert json.loads(data.removeprefix("data: ")) == {
        "type": "image_edit.partial_image", "b64_json": "AAAA", "partial_image_index": 2,
        "created_at": 1700000000, "size": "auto", "quality": "auto", "background": "opaque", "output_format": "webp",
    }  # fmt: skip


def test_completed_frame_carries_usage_and_drops_a_missing_safety_identifier():
    event = ImageGenerationCompletedEvent(
        b64_json="AAAA", created_at=1, size="1024x1024", quality="high", background="auto", output_format="png",
        usage=usage(3, 4096),
    )  # fmt: skip
    payload = json.loads(sse_frame(event).decode().split("\n")[1].removeprefix("data: "))
    assert payload["type"] == "image_generation.completed" and "safety_identifier" not in payload
    assert payload["usage"]["total_tokens"] == 4099 and "partial_image_index" not in payload


def test_error_frame_keeps_null_param_and_code():
    frame = sse_frame(error_event(GenerationError("out of memory", code="out_of_memory")))
    name, data = frame.decode().rstrip("\n").split("\n")
    assert name == "event: error"
    assert json.loads(data.removeprefix("data: ")) == {
        "type": "error",
        "error": {"message": "out of memory", "type": "server_error", "param": None, "code": "out_of_memory"},
    }


def test_keep_alive_is_a_comment_frame():
    assert KEEP_ALIVE_FRAME == b": keep-alive\n\n"


def plan(**fields):
    return plan_generation(ImageGenerateRequest(prompt="a red circle", **fields), REGISTRY, lambda: 1)


def test_stream_keeps_the_requested_settings():
    job = plan(stream=True, partial_images=2, quality="high")
    assert job.stream is not None
    assert (job.stream.partial_images, job.stream.size, job.stream.quality, job.stream.background) == (
        2, "auto", "high", "auto",
    )  # fmt: skip
    assert job.quality == "high" and job.plan.steps == 28


@pytest.mark.parametrize(
    ("fields", "steps"),
    [
        ({"partial_images": 3}, 4),  # medium: 4 steps suffice
        ({"partial_images": 3, "quality": "low"}, 4),  # low: 1 step, raised to k + 1
        ({"partial_images": 1, "quality": "low"}, 2),
        ({"partial_images": 0, "quality": "low"}, 1),
        ({"partial_images": 2, "num_inference_steps": 1}, 3),
    ],
)
def test_streamed_jobs_get_at_least_k_plus_1_steps(fields: dict, steps: int):
    assert plan(stream=True, **fields).plan.steps == steps


def test_partial_images_without_stream_change_nothing():
    job = plan(partial_images=3, quality="low")
    assert job.stream is None and job.plan.steps == 1


@pytest.mark.parametrize("model", ["dall-e-2", "dall-e-3"])
def test_dalle_models_do_not_stream(model: str):
    with pytest.raises(InvalidRequestError) as info:
        plan(model=model, stream=True)
    assert (info.value.param, info.value.code) == ("stream", "invalid_value")


def test_unnamed_frame_is_the_data_line_alone():
    frame = sse_frame(error_event(GenerationError("out of memory")), named=False)
    assert frame.startswith(b"data: {") and frame.endswith(b"}\n\n") and frame.count(b"\n") == 2


def stainless(lang: str, asynchronous: str, version: str) -> dict[str, str]:
    return {"x-stainless-lang": lang, "x-stainless-async": asynchronous, "x-stainless-package-version": version}


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({}, True),  # curl, browsers, other clients: the documented framing
        (stainless("python", "false", "1.97.0"), True),
        (stainless("python", "async:asyncio", "1.97.0"), False),
        (stainless("python", "async:trio", "1.97.1"), False),
        (stainless("python", "async:asyncio", "1.97.2"), True),
        (stainless("js", "false", "1.97.0"), True),
    ],
)
def test_only_old_async_python_sdks_get_unnamed_frames(headers: dict[str, str], named: bool):
    assert names_events_for(headers) is named
