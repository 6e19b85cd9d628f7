"""The gpt-image rules of service/planning.py, as tables from the spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from localimg.errors import InvalidRequestError
from localimg.protocol import ImageGenerateRequest
from localimg.registry import ImageSize, Registry
from localimg.service.planning import draw_seeds, image_tokens, plan_generation, resolve_size

REGISTRY = Registry.from_dict(
    {
        "default_model": "flux",
        "models": {
            "flux": {
                "family": "flux",
                "source": {"path": "/nowhere/flux"},
                "aliases": ["gpt-image-1", "dall-e-2", "dall-e-3"],
                "limits": {"min_side": 256, "max_side": 2048, "max_pixels": 2048 * 1536},
                "quality": {"auto": "medium", "low": {"steps": 4}, "medium": {"steps": 8}, "high": {"steps": 16}},
            },
            "sd15": {"family": "sd15", "source": {"path": "/nowhere/sd15"}},
            "flux-2.5": {
                "family": "flux",
                "source": {"path": "/nowhere/flux"},
                "quality": {"xhigh": {"steps": 60}, "max": {"steps": 80}},
            },
        },
    },
    base_dir=Path("/"),
)


def plan(**fields):
    fields.setdefault("prompt", "a red circle")
    return plan_generation(ImageGenerateRequest(**fields), REGISTRY, lambda: 1234)


def rejects(param: str | None, code: str | None, **fields) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        plan(**fields)
    assert (info.value.param, info.value.code) == (param, code), info.value.message
    return info.value


def test_defaults_resolve_everything():
    job = plan()
    assert job.spec.name == "flux" and job.api_style == "gpt-image"
    assert (job.plan.width, job.plan.height, job.plan.n) == (1024, 1024, 1)
    assert job.quality == "medium" and job.plan.steps == 8
    assert job.output.format == "png" and job.output.background == "opaque" and job.output.compression == 100
    assert job.response_format == "b64_json"
    assert job.plan.seeds == (1234,)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("1024x1024", (1024, 1024)),
        ("1536x1024", (1536, 1024)),
        ("1024x1536", (1024, 1536)),
        ("auto", (1024, 1024)),
        (None, (1024, 1024)),
        ("768x512", (768, 512)),
        ("2048x688", (2048, 688)),
    ],
)
def test_sizes_accepted(size, expected):
    job = plan(size=size)
    assert (job.size.width, job.size.height) == expected
    assert (job.plan.width, job.plan.height) == expected


@pytest.mark.parametrize(
    ("size", "fragment"),
    [
        ("bogus", "Expected WIDTHxHEIGHT"),
        ("13x13", "divisible by 16"),
        ("1000x1000", "divisible by 16"),
        ("2048x672", "aspect ratio"),
        ("4096x4096", "supports sides"),
        ("128x128", "supports sides"),
        ("2048x2048", "supports sides"),  # over max_pixels
        ("1024x1024 ", "Expected WIDTHxHEIGHT"),
        ("0x0", "Expected WIDTHxHEIGHT"),
        ("1024x0", "Expected WIDTHxHEIGHT"),
    ],
)
def test_sizes_rejected(size, fragment):
    assert fragment in rejects("size", "invalid_value", size=size).message


def test_model_default_size_and_multiple_of():
    assert plan(model="sd15").size == ImageSize(512, 512)
    spec = REGISTRY.resolve("sd15")
    assert resolve_size("1024x1536", "gpt-image", spec) == ImageSize(1024, 1536)


@pytest.mark.parametrize(("quality", "steps"), [("low", 4), ("medium", 8), ("high", 16), ("auto", 8)])
def test_quality_presets(quality, steps):
    job = plan(quality=quality)
    assert job.plan.steps == steps
    assert job.quality == (quality if quality != "auto" else "medium")


@pytest.mark.parametrize("quality", ["ultra", "standard", "hd", "xhigh", ""])
def test_quality_rejected_for_gpt_image(quality):
    err = rejects("quality", "invalid_value", quality=quality)
    assert "'low', 'medium', 'high', and 'auto'" in err.message


@pytest.mark.parametrize(("quality", "steps"), [("high", 50), ("xhigh", 60), ("max", 80)])
def test_levels_above_high_run_where_the_model_defines_them(quality, steps):
    job = plan(model="flux-2.5", quality=quality)
    assert (job.quality, job.plan.steps) == (quality, steps)
    err = rejects("quality", "invalid_value", model="flux-2.5", quality="ultra")
    assert "'low', 'medium', 'high', 'xhigh', 'max', and 'auto'" in err.message


@pytest.mark.parametrize("complexity", ["low", "medium", "high"])
def test_complexity_is_accepted_and_changes_nothing(complexity):
    assert plan(complexity=complexity).plan == plan().plan
    with pytest.raises(ValueError, match="complexity"):
        ImageGenerateRequest(prompt="x", complexity="extreme")


def test_dalle3_rules():
    job = plan(model="dall-e-3", quality="hd", style="vivid")
    assert job.api_style == "dall-e-3" and job.quality == "high" and job.response_format == "url"
    assert plan(model="dall-e-3", size="1792x1024").size == ImageSize(1792, 1024)
    assert rejects(None, None, model="dall-e-3", n=2).message == "You must provide n=1 for this model."
    rejects("size", "invalid_value", model="dall-e-3", size="1536x1024")
    rejects("quality", "invalid_value", model="dall-e-3", quality="low")


def test_dalle2_rules():
    job = plan(model="dall-e-2", response_format="b64_json", n=3)
    assert job.size == ImageSize(1024, 1024) and job.response_format == "b64_json" and job.plan.n == 3
    rejects("size", "invalid_value", model="dall-e-2", size="1792x1024")
    rejects("style", "unknown_parameter", model="dall-e-2", style="vivid")
    rejects("prompt", "string_above_max_length", model="dall-e-2", prompt="x" * 1001)


@pytest.mark.parametrize(
    ("param", "value"), [("response_format", "url"), ("response_format", "b64_json"), ("style", "vivid")]
)
def test_dalle_only_params_rejected_for_gpt_image(param, value):
    err = rejects(param, "unknown_parameter", model="gpt-image-1", **{param: value})
    assert err.message == f"Unknown parameter: '{param}'."


def test_prompt_length_limit():
    assert plan(prompt="x" * 32000).plan.prompt == "x" * 32000
    err = rejects("prompt", "string_above_max_length", prompt="x" * 32001)
    assert "maximum length 32000" in err.message and "length 32001" in err.message


def test_unknown_model():
    err = rejects("model", "invalid_value", model="no-such-model")
    assert err.message.startswith("The model 'no-such-model' does not exist.")
    assert err.type == "image_generation_user_error"


def test_alias_resolves_to_local_model():
    job = plan(model="gpt-image-1")
    assert job.spec.name == "flux" and job.api_style == "gpt-image"


@pytest.mark.parametrize(
    ("fmt", "compression", "expected"), [("png", None, 100), ("png", 100, 100), ("jpeg", 50, 50), ("webp", 0, 0)]
)
def test_output_formats(fmt, compression, expected):
    job = plan(output_format=fmt, output_compression=compression)
    assert job.output.format == fmt and job.output.compression == expected


def test_png_with_compression_rejected():
    rejects("output_compression", "invalid_png_output_compression", output_format="png", output_compression=50)
    rejects("output_compression", "invalid_png_output_compression", output_compression=99)


def test_transparent_background():
    err = rejects("background", "invalid_value", background="transparent", output_format="jpeg")
    assert "png or webp" in err.message
    assert plan(background="transparent", output_format="png").output.background == "transparent"
    assert plan(background="transparent", output_format="webp").output.background == "transparent"
    assert plan(background="auto").output.background == "opaque"
    assert plan(background="opaque").output.background == "opaque"


def test_background_auto_follows_the_prompt():
    prompt = "a fox logo on a transparent background"
    assert plan(background="auto", prompt=prompt).output.background == "transparent"
    assert plan(prompt=prompt).output.background == "transparent"  # omitted is OpenAI's default, auto
    assert plan(prompt="a fox logo").output.background == "opaque"
    assert plan(model="dall-e-3", prompt=prompt, output_format=None).output.background == "opaque"  # no such setting
    assert plan(background="opaque", prompt=prompt).output.background == "opaque"
    assert plan(background="auto", prompt=prompt, output_format="jpeg").output.background == "opaque"


def test_extensions_override_presets():
    job = plan(num_inference_steps=3, guidance_scale=0.0, negative_prompt="blurry", seed=7, n=3)
    assert job.plan.steps == 3 and job.plan.guidance_scale == 0.0
    assert job.plan.negative_prompt == "blurry"
    assert job.plan.seeds == (7, 8, 9)


def test_seeds_wrap_and_random_source():
    assert draw_seeds(2**63 - 1, 2, lambda: 0) == (2**63 - 1, 0)
    assert draw_seeds(None, 2, lambda: 41) == (41, 42)


def test_safety_identifier_falls_back_to_user():
    assert plan(user="u1").safety_identifier == "u1"
    assert plan(user="u1", safety_identifier="s1").safety_identifier == "s1"


def test_image_tokens_are_16px_patches():
    assert image_tokens(ImageSize(1024, 1024)) == 4096
    assert image_tokens(ImageSize(1536, 1024)) == 6144


def test_a_request_naming_no_model_may_send_response_format():
    # The API's default model used to be dall-e-2; code of that time sends only prompt and response_format.
    assert plan(model=None, response_format="b64_json").response_format == "b64_json"
    assert plan(model=None, response_format="url").response_format == "url"
    assert plan(model=None).response_format == "b64_json"
    rejects("response_format", "unknown_parameter", model="gpt-image-1", response_format="b64_json")


@pytest.mark.parametrize("response_format", ["b64_json", "url"])
def test_a_local_models_own_name_may_send_response_format(response_format: str):
    """OpenAI has no rule for a local model's name, and clients made for OpenAI-compatible servers (the AI SDK's)
    send `response_format` to every model; OpenAI's own GPT names keep refusing it."""
    job = plan(model="flux", response_format=response_format)
    assert job.api_style == "gpt-image" and job.response_format == response_format


def test_dall_e_default_size_is_checked_against_the_model():
    small = Registry.from_dict(
        {"models": {"m": {"family": "sd15", "source": {"path": "/nowhere"}, "aliases": ["dall-e-2"],
                          "limits": {"min_side": 256, "max_side": 768, "max_pixels": 768 * 768}}}},
        base_dir=Path("/"),
    )  # fmt: skip
    with pytest.raises(InvalidRequestError) as info:
        plan_generation(ImageGenerateRequest(prompt="x", model="dall-e-2"), small, lambda: 1)
    assert info.value.param == "size" and "1024x1024" in info.value.message
