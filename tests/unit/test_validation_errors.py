"""Pydantic validation failures become the one OpenAI error the live API would report."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from localimg.api.errors import openai_validation_error
from localimg.protocol import ImageGenerateRequest


def error_for(body: object):
    with pytest.raises(ValidationError) as info:
        ImageGenerateRequest.model_validate(body)
    return openai_validation_error(info.value.errors())


@pytest.mark.parametrize(
    ("body", "param", "code", "message"),
    [
        ({"prompt": "x", "bogus": 1}, "bogus", "unknown_parameter", "Unknown parameter: 'bogus'."),
        ({}, "prompt", "missing_required_parameter", "Missing required parameter: 'prompt'."),
        (
            {"prompt": ""},
            "prompt",
            "empty_string",
            "Invalid 'prompt': empty string. Expected a string with minimum length 1, but got an empty string instead.",
        ),
        (
            {"prompt": "x", "n": 11},
            "n",
            "integer_above_max_value",
            "Invalid 'n': integer above maximum value. Expected a value <= 10, but got 11 instead.",
        ),
        (
            {"prompt": "x", "n": 0},
            "n",
            "integer_below_min_value",
            "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead.",
        ),
        (
            {"prompt": "x", "n": "2"},
            "n",
            "invalid_type",
            "Invalid type for 'n': expected an integer, but got a string instead.",
        ),
        ({"prompt": "x", "n": True}, "n", "invalid_type", None),
        (
            {"prompt": 3},
            "prompt",
            "invalid_type",
            "Invalid type for 'prompt': expected a string, but got an integer instead.",
        ),
        ({"prompt": None}, "prompt", "invalid_type", None),
        ({"prompt": "x", "output_format": "gif"}, "output_format", "invalid_value", None),
        ({"prompt": "x", "background": "green"}, "background", "invalid_value", None),
        ({"prompt": "x", "output_compression": 101}, "output_compression", "integer_above_max_value", None),
        ({"prompt": "x", "partial_images": 4}, "partial_images", "integer_above_max_value", None),
        ({"prompt": "x", "stream": "true"}, "stream", "invalid_type", None),
        ({"prompt": "x", "guidance_scale": -1.0}, "guidance_scale", "decimal_below_min_value", None),
        ({"prompt": "x", "seed": -1}, "seed", "integer_below_min_value", None),
    ],
)
def test_translation(body, param, code, message):
    err = error_for(body)
    assert err.status == 400 and err.type == "invalid_request_error"
    assert (err.param, err.code) == (param, code)
    if message:
        assert err.message == message


def test_unknown_key_reported_before_other_faults():
    err = error_for({"prompt": "", "n": 99, "mask": "x"})
    assert (err.param, err.code) == ("mask", "unknown_parameter")


def test_prompt_reported_before_n_and_enums():
    err = error_for({"prompt": "", "n": 99, "output_format": "gif"})
    assert err.param == "prompt"
    err = error_for({"prompt": "x", "n": 99, "output_format": "gif"})
    assert err.param == "n"


def test_literal_error_lists_supported_values_as_openai_does():
    err = error_for({"prompt": "x", "output_format": "gif"})
    assert err.message == "Invalid value: 'gif'. Supported values are: 'png', 'jpeg', and 'webp'."
    err = error_for({"prompt": "x", "moderation": "high"})
    assert err.message == "Invalid value: 'high'. Supported values are: 'low' and 'auto'."


@pytest.mark.parametrize(("text", "code"), [("11", "integer_above_max_value"), ("0", "integer_below_min_value")])
def test_numbers_sent_as_text_keep_their_integer_codes(text: str, code: str):
    # Multipart forms carry every number as text; "11" is still an integer above n's maximum.
    error = {"type": "less_than_equal" if text == "11" else "greater_than_equal", "loc": ("body", "n"),
             "input": text, "ctx": {"le": 10} if text == "11" else {"ge": 1}, "msg": "bound"}  # fmt: skip
    err = openai_validation_error([error])
    assert (err.param, err.code) == ("n", code)


def test_unparseable_json_names_no_parameter():
    error = {"type": "json_invalid", "loc": ("body", 15), "input": {}, "ctx": {"error": "EOF"}, "msg": "JSON"}
    err = openai_validation_error([error])
    assert (err.param, err.code) == (None, "invalid_json")


def test_null_means_not_given():
    request = ImageGenerateRequest.model_validate({"prompt": "x", "n": None, "quality": None, "size": None})
    assert request.n is None and request.quality is None


def test_a_float_field_sent_as_text_keeps_its_decimal_code():
    error = {"type": "less_than_equal", "loc": ("body", "strength"), "input": "2", "ctx": {"le": 1.0}, "msg": "b"}
    assert openai_validation_error([error]).code == "decimal_above_max_value"


def test_an_exclusive_bound_is_named_as_one():
    error = {"type": "greater_than", "loc": ("body", "strength"), "input": 0, "ctx": {"gt": 0.0}, "msg": "b"}
    err = openai_validation_error([error])
    assert err.code == "decimal_below_min_value" and "Expected a value > 0.0, but got 0 instead." in err.message
