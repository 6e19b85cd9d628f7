"""Every invalid input from the spec's checklist gives the right 400, through the official SDK."""

from __future__ import annotations

import io
import json

import httpx
import openai
import pytest
from openai import OpenAI
from PIL import Image

PROMPT = "a red circle"

INVALID = [
    # (kwargs, param, code)
    ({"prompt": ""}, "prompt", "empty_string"),
    ({"prompt": "x" * 32001}, "prompt", "string_above_max_length"),
    ({"n": 0}, "n", "integer_below_min_value"),
    ({"n": 11}, "n", "integer_above_max_value"),
    ({"n": "2"}, "n", "invalid_type"),
    ({"size": "13x13"}, "size", "invalid_value"),
    ({"size": "bogus"}, "size", "invalid_value"),
    ({"size": "4096x1024"}, "size", "invalid_value"),
    ({"size": "8192x8192"}, "size", "invalid_value"),
    ({"quality": "ultra"}, "quality", "invalid_value"),
    ({"quality": "hd"}, "quality", "invalid_value"),
    ({"output_format": "gif"}, "output_format", "invalid_value"),
    ({"model": "no-such-model"}, "model", "invalid_value"),
    ({"model": ""}, "model", "empty_string"),  # an unset setting, not "the default model"
    ({"background": "transparent", "output_format": "jpeg"}, "background", "invalid_value"),
    ({"output_format": "png", "output_compression": 50}, "output_compression", "invalid_png_output_compression"),
    ({"output_compression": 101, "output_format": "jpeg"}, "output_compression", "integer_above_max_value"),
    ({"model": "gpt-image-1", "response_format": "url"}, "response_format", "unknown_parameter"),
    ({"style": "vivid"}, "style", "unknown_parameter"),
    ({"moderation": "strict"}, "moderation", "invalid_value"),
    ({"model": "dall-e-3", "n": 2}, None, None),
    ({"model": "dall-e-2", "size": "1536x1024"}, "size", "invalid_value"),
    ({"extra_body": {"bogus_field": 1}}, "bogus_field", "unknown_parameter"),
    ({"extra_body": {"mask": "x"}}, "mask", "unknown_parameter"),
    # The newest SDKs' GIF and SVG options (preview-gated on OpenAI), sent as those SDKs send them.
    ({"extra_body": {"frame_count": 4}}, "frame_count", "unknown_parameter"),
    ({"extra_body": {"svg": {"model": "gpt-5"}}}, "svg", "unknown_parameter"),
    ({"extra_body": {"seed": "7"}}, "seed", "invalid_type"),
    ({"extra_body": {"num_inference_steps": 0}}, "num_inference_steps", "integer_below_min_value"),
]


@pytest.mark.parametrize(("kwargs", "param", "code"), INVALID, ids=[f"{p}-{c}" for _, p, c in INVALID])
def test_invalid_input_is_a_400(client: OpenAI, kwargs: dict, param: str, code: str):
    kwargs = {"model": "tiny-flux", "prompt": PROMPT, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(**kwargs)
    err = info.value
    assert err.status_code == 400
    assert (err.param, err.code) == (param, code), err.message
    # The live API types an unknown model and a refused free-form (GPT) size as the image model's own refusal.
    model_refusal = (param, code) == ("model", "invalid_value") or (param == "size" and kwargs["model"] == "tiny-flux")
    assert err.type == ("image_generation_user_error" if model_refusal else "invalid_request_error")
    assert set(err.body) == {"message", "type", "param", "code"} and err.message
    assert err.response.headers["x-request-id"].startswith("req_")


def raw_post(server, body: bytes | str, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(
        f"{server.root}/v1/images/generations", content=body, headers={"content-type": content_type}, timeout=30
    )


MALFORMED = ["{not json", '{"prompt": "x",', "[1, 2]", '"a string"', "null", b'{"prompt": "\xff"}', "[" * 100_000]


@pytest.mark.parametrize("body", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_json_is_a_400_envelope(server, body: str | bytes):
    response = raw_post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (None, "invalid_json"), error


LONG = "x" * 32001
SEVERAL_FAULTS = [  # the body, and the one fault the live API reports: unknown keys, prompt, images, n, enums
    ({"prompt": LONG, "n": 0, "bogus": 1}, "bogus"),
    ({"prompt": LONG, "n": 0, "output_format": "gif"}, "prompt"),
    ({"prompt": LONG, "background": "none"}, "prompt"),
    ({"model": "dall-e-2", "prompt": "x" * 1001, "n": 11}, "prompt"),
    ({"prompt": "fine", "n": 0, "output_format": "gif"}, "n"),
    ({"prompt": "", "n": 0}, "prompt"),
]


@pytest.mark.parametrize(("body", "param"), SEVERAL_FAULTS, ids=[param for _, param in SEVERAL_FAULTS])
def test_of_several_faults_the_first_in_the_live_apis_order_is_reported(server, body: dict, param: str):
    response = raw_post(server, json.dumps(body))
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


@pytest.mark.parametrize("field", ["prompt", "model", "size", "quality", "output_format", "user", "negative_prompt"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_string_holding_half_a_utf16_pair_is_a_400_naming_its_field(server, field: str, stream: bool):
    """JSON can escape a lone surrogate, as the Node SDK sends a JavaScript string cut mid-emoji ('😀x'.slice(1)).
    No UTF-8 text holds one, so it is refused up front, not left to break the response that echoes it."""
    body = {"model": "tiny-flux", "prompt": "x", "size": "256x256", "stream": stream, field: "a\ud83d"}
    response = raw_post(server, json.dumps(body))  # ASCII, with the surrogate escaped: "a\\ud83d"
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {
        "message": f"Invalid '{field}': the string is not valid Unicode (it holds an unpaired UTF-16 surrogate).",
        "type": "invalid_request_error",
        "param": field,
        "code": "invalid_value",
    }


@pytest.mark.parametrize(("n", "code"), [(11, "integer_above_max_value"), (0, "integer_below_min_value")])
def test_out_of_range_n_on_multipart_routes_has_the_integer_code(client: OpenAI, n: int, code: str):
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 150)).save(png, format="PNG")
    for call in (
        lambda: client.images.edit(model="tiny-flux", image=png.getvalue(), prompt="x", n=n),
        lambda: client.images.create_variation(image=png.getvalue(), n=n),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            call()
        assert (info.value.param, info.value.code) == ("n", code)


@pytest.mark.parametrize("body", ['{"model": "tiny-flux"}', ""])
def test_missing_prompt(server, body: str):
    response = raw_post(server, body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "missing_required_parameter"
    assert response.json()["error"]["param"] == "prompt"


def test_a_url_cannot_forge_or_break_log_lines(server):
    forged = "2026-01-01 00:00:00,000 ERROR localimg forged-entry"
    response = httpx.get(f"{server.root}/v1/models/x%0A{forged.replace(' ', '%20')}%00", timeout=10)
    assert response.status_code == 404
    log = server.log_path.read_text()
    assert "forged-entry" in log and not any(line.startswith(forged) for line in log.splitlines())
    assert r"\x00" in log and "\x00" not in log  # escaped, not raw


def test_unknown_route_and_method(server):
    response = httpx.get(f"{server.root}/v1/nope", timeout=10)
    assert response.status_code == 404 and "error" in response.json()
    response = httpx.get(f"{server.root}/v1/images/generations", timeout=10)
    assert response.status_code == 405 and "error" in response.json()


def test_models_list_and_retrieve(client: OpenAI):
    ids = [model.id for model in client.models.list()]
    for expected in ("tiny-flux", "tiny-sd15", "tiny-sdxl", "tiny-sd3", "gpt-image-2", "gpt-image-1", "dall-e-3"):
        assert expected in ids
    model = client.models.retrieve("gpt-image-1")
    assert (model.id, model.object, model.owned_by) == ("gpt-image-1", "model", "localimg")
    assert isinstance(model.created, int)
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("nope")
    assert info.value.status_code == 404 and info.value.code == "model_not_found"
