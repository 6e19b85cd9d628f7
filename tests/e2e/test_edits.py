"""POST /v1/images/edits and /v1/images/variations through the official `openai` SDK (multipart, as it sends
them), against the real server and tiny models; plus the JSON variant of edits over plain HTTP."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from PIL import Image, ImageDraw

from tests.e2e.images import check_magic, decode

PROMPT = "turn the square into a sunflower"


def picture(width: int = 256, height: int = 256, *, seed: int = 0) -> Image.Image:
    """A deterministic RGB picture with structure (gradients and a square), so edits have something to keep."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    base = np.concatenate([x.repeat(height, 0), y.repeat(width, 1), np.full((height, width, 1), 90.0)], axis=2)
    noise = rng.integers(0, 30, (height, width, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    ImageDraw.Draw(image).rectangle((width // 3, height // 3, 2 * width // 3, 2 * height // 3), fill=(200, 30, 30))
    return image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def hole_mask(width: int = 256, height: int = 256) -> Image.Image:
    """OpenAI mask: opaque everywhere except a fully transparent box in the middle (the region to edit)."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    ImageDraw.Draw(mask).rectangle((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(0, 0, 0, 0))
    return mask


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd15", "tiny-sdxl", "tiny-sd3"])
def test_single_image_edit_every_family(client: OpenAI, model: str):
    source = picture()
    result = client.images.edit(model=model, image=("in.png", png_bytes(source), "image/png"), prompt=PROMPT)
    image = decode(result.data[0].b64_json, "png", (256, 256))
    assert image.mode == "RGB"
    assert (result.size, result.background, result.output_format) == ("256x256", "opaque", "png")
    assert result.usage.input_tokens_details.image_tokens == 16 * 16
    assert result.usage.input_tokens == result.usage.input_tokens_details.text_tokens + 16 * 16


def test_edit_result_depends_on_the_input(client: OpenAI):
    def edit(source: Image.Image) -> np.ndarray:
        result = client.images.edit(
            model="tiny-sd15", image=png_bytes(source), prompt=PROMPT, extra_body={"seed": 3, "input_fidelity": "high"}
        )
        return pixels(decode(result.data[0].b64_json))

    # Tiny random VAEs cannot reproduce an input, so the effect is small, but it is there: an ignored input gives 0.
    assert np.abs(edit(picture(seed=1)) - edit(Image.new("RGB", (256, 256), (20, 200, 20)))).mean() > 1


def test_raw_bytes_upload_is_sniffed(client: OpenAI, tmp_path):
    """The SDK sends bytes without a name as application/octet-stream: the magic bytes decide."""
    webp = io.BytesIO()
    picture().save(webp, format="WEBP")
    result = client.images.edit(image=webp.getvalue(), prompt=PROMPT, output_format="webp")
    check_magic(base64.b64decode(result.data[0].b64_json), "webp")
    jpeg_file = tmp_path / "photo.jpg"
    picture().save(jpeg_file, format="JPEG")
    with jpeg_file.open("rb") as handle:
        result = client.images.edit(image=handle, prompt=PROMPT)
    decode(result.data[0].b64_json, "png", (256, 256))


def test_masked_edit_keeps_every_pixel_outside_the_mask(client: OpenAI):
    source, mask = picture(seed=4), hole_mask()
    result = client.images.edit(
        model="tiny-sd15", image=png_bytes(source), mask=png_bytes(mask), prompt=PROMPT, n=2, extra_body={"seed": 9}
    )
    assert len(result.data) == 2
    outside = np.asarray(mask)[..., 3] > 0
    for item in result.data:
        edited = pixels(decode(item.b64_json, "png", (256, 256)))
        assert np.array_equal(edited[outside], pixels(source)[outside])
        assert np.abs(edited[~outside] - pixels(source)[~outside]).mean() > 5, "the masked region was not edited"


def test_without_a_mask_dall_e_2_edits_the_transparent_pixels_and_gpt_models_the_whole_image(client: OpenAI):
    source = picture(seed=5).convert("RGBA")
    ImageDraw.Draw(source).rectangle((0, 0, 127, 255), fill=(0, 0, 0, 0))  # left half transparent
    legacy = client.images.edit(
        model="dall-e-2", image=png_bytes(source), prompt=PROMPT, size="256x256", response_format="b64_json"
    )
    edited = pixels(decode(legacy.data[0].b64_json, "png", (256, 256)))
    assert np.array_equal(edited[:, 128:], pixels(source)[:, 128:])  # only the transparent half was repainted
    whole = client.images.edit(model="gpt-image-1", image=png_bytes(source), prompt=PROMPT)
    edited = pixels(decode(whole.data[0].b64_json, "png", (256, 256)))
    assert np.abs(edited[:, 128:] - pixels(source)[:, 128:]).mean() > 5, "the opaque half was not edited"


@pytest.mark.parametrize("background", ["transparent", None])
def test_a_transparent_masked_edit_returns_every_pixel_outside_the_mask_as_it_was(client: OpenAI, background):
    """Only the masked region is edited, and matted: a green photo outside it is not keyed out, and a cut-out's
    partly transparent pixels keep their colour and alpha (an omitted background is transparent for a cut-out)."""
    source = Image.new("RGBA", (256, 256), (40, 160, 60, 255))  # leaf green: what the key-colour matting removes
    ImageDraw.Draw(source).rectangle((0, 0, 47, 255), fill=(0, 0, 0, 0))  # a cut-out's clear band
    ImageDraw.Draw(source).rectangle((48, 0, 63, 255), fill=(85, 252, 0, 128))  # and a half-transparent one
    if background is not None:
        source = Image.alpha_composite(Image.new("RGBA", source.size, (255, 255, 255, 255)), source)  # an opaque photo
    mask = hole_mask()
    result = client.images.edit(
        model="tiny-sd15", image=png_bytes(source), mask=png_bytes(mask), prompt=PROMPT,
        **({"background": background} if background else {}),
    )  # fmt: skip
    assert result.background == "transparent"
    edited = np.asarray(decode(result.data[0].b64_json, "png", (256, 256)))
    outside = np.asarray(mask)[..., 3] > 0
    assert edited.shape == (256, 256, 4)
    assert np.array_equal(edited[outside], np.asarray(source)[outside])


def test_a_masked_edit_of_a_logo_with_an_opaque_output_keeps_what_the_model_saw(client: OpenAI):
    # Transparent pixels of a PNG hold a colour no viewer shows (black here, as most editors save them).
    logo = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    ImageDraw.Draw(logo).ellipse((16, 16, 240, 240), fill=(30, 90, 200, 255))  # around the mask's hole
    result = client.images.edit(
        model="tiny-sd15", image=png_bytes(logo), mask=png_bytes(hole_mask()), prompt=PROMPT, background="opaque"
    )
    assert result.background == "opaque"
    edited = pixels(decode(result.data[0].b64_json, "png", (256, 256)))
    assert (edited[:12, :12] == 255).all(), "the logo's transparent corner came back in its hidden colour"
    assert (edited[128, 30] == (30, 90, 200)).all()


def test_an_input_of_another_aspect_is_cropped_not_stretched(client: OpenAI):
    # A 512x256 picture with a white centre square between black sides, edited at 256x256 with a small hole to
    # repaint: the kept pixels are the centre square's, not the whole picture squeezed (black sides 64 px wide).
    wide = Image.new("RGB", (512, 256), (0, 0, 0))
    wide.paste((255, 255, 255), (128, 0, 384, 256))
    mask = Image.new("RGBA", (512, 256), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (240, 112, 272, 144))
    result = client.images.edit(
        model="tiny-sd15", image=png_bytes(wide), mask=png_bytes(mask), prompt=PROMPT, size="256x256"
    )
    edited = pixels(decode(result.data[0].b64_json, "png", (256, 256)))
    assert (edited[:96, 4:252] == 255).all() and (edited[160:, 4:252] == 255).all()


def test_mask_of_the_wrong_size_is_rejected(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(image=png_bytes(picture()), mask=png_bytes(hole_mask(128, 128)), prompt=PROMPT)
    assert info.value.body["param"] == "mask"
    assert "128x128" in info.value.body["message"] and "256x256" in info.value.body["message"]


@pytest.mark.parametrize(("width", "height"), [(384, 256), (256, 512)])
def test_size_auto_follows_the_input(client: OpenAI, width: int, height: int):
    result = client.images.edit(image=png_bytes(picture(width, height)), prompt=PROMPT, size="auto")
    decode(result.data[0].b64_json, "png", (width, height))
    assert result.size == f"{width}x{height}"


def test_size_auto_scales_an_odd_input_into_the_model_grid(client: OpenAI):
    result = client.images.edit(model="tiny-flux", image=png_bytes(picture(300, 200)), prompt=PROMPT)
    width, height = decode(result.data[0].b64_json).size
    assert width % 16 == 0 and height % 16 == 0
    assert abs(width / height - 1.5) < 0.1


def test_explicit_size(client: OpenAI):
    result = client.images.edit(image=png_bytes(picture()), prompt=PROMPT, size="1024x1536", quality="low")
    decode(result.data[0].b64_json, "png", (1024, 1536))


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd15", "tiny-sdxl", "tiny-sd3"])
def test_input_fidelity_high_stays_closer_to_the_input(client: OpenAI, model: str):
    source = picture(seed=6)

    def distance(fidelity: str) -> float:
        result = client.images.edit(
            model=model,
            image=png_bytes(source),
            prompt=PROMPT,
            input_fidelity=fidelity,  # type: ignore[arg-type]
            extra_body={"seed": 21},
        )
        return float(np.abs(pixels(decode(result.data[0].b64_json)) - pixels(source)).mean())

    assert distance("high") < distance("low")


def test_several_images_on_the_default_model_run_on_its_references_model(client: OpenAI):
    images = [png_bytes(picture(seed=1)), png_bytes(picture(128, 128, seed=2))]
    result = client.images.edit(image=images, prompt="put the second in the first")  # default model: tiny-flux
    decode(result.data[0].b64_json, "png", (256, 256))
    assert result.usage.input_tokens_details.image_tokens == 16 * 16 + 8 * 8


def test_several_images_need_a_model_that_takes_references(client: OpenAI):
    images = [png_bytes(picture(seed=1)), png_bytes(picture(seed=2))]
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(model="tiny-sd15", image=images, prompt=PROMPT)
    assert info.value.body["param"] == "image"
    assert info.value.body["code"] == "too_many_images"


def test_reference_images_on_a_kontext_model(client: OpenAI):
    images = [png_bytes(picture(256, 256, seed=1)), png_bytes(picture(128, 192, seed=2))]
    result = client.images.edit(model="tiny-flux-kontext", image=images, prompt="put the second in the first", n=2)
    assert len(result.data) == 2
    for item in result.data:
        decode(item.b64_json, "png", (256, 256))
    assert result.usage.input_tokens_details.image_tokens == 16 * 16 + 8 * 12
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(model="tiny-flux-kontext", image=images * 9, prompt=PROMPT)  # OpenAI's limit is 16
    assert info.value.body["code"] == "too_many_images"


def test_a_one_element_list_is_sent_as_image_brackets(client: OpenAI):
    result = client.images.edit(model="tiny-sd15", image=[png_bytes(picture())], prompt=PROMPT)
    decode(result.data[0].b64_json, "png", (256, 256))


@pytest.mark.parametrize(
    ("model", "fmt"),
    [("tiny-flux", "png"), ("gpt-image-1", "webp"), ("tiny-sd15", "png"), ("tiny-sdxl", "webp"), ("tiny-sd3", "png")],
)
def test_transparent_background_on_generations(client: OpenAI, model: str, fmt: str):
    result = client.images.generate(
        model=model, prompt="a red apple", size="256x256", background="transparent", output_format=fmt
    )
    assert result.background == "transparent"
    image = decode(result.data[0].b64_json, fmt, (256, 256))
    assert image.mode == "RGBA"
    alpha = np.asarray(image.getchannel("A"))
    assert (alpha == 0).mean() > 0.05, "no fully transparent region"
    assert (alpha == 255).mean() > 0.05, "no fully opaque region"


def test_transparent_background_on_edits(client: OpenAI):
    source = picture(seed=7).convert("RGBA")
    ImageDraw.Draw(source).rectangle((0, 0, 255, 63), fill=(0, 0, 0, 0))  # a transparent band: edited region
    result = client.images.edit(
        model="tiny-sd15", image=png_bytes(source), prompt=PROMPT, background="transparent", output_format="png"
    )
    assert result.background == "transparent"
    assert decode(result.data[0].b64_json, "png", (256, 256)).mode == "RGBA"


def test_usage_and_revised_prompt_hold_only_the_clients_words(client: OpenAI):
    # Built-in transparency adds words of its own to the prompt the model sees; the client pays for and reads its own.
    ask = {"model": "tiny-sd15", "prompt": "a red apple", "size": "256x256"}
    opaque = client.images.generate(**ask)
    clear = client.images.generate(**ask, background="transparent")
    assert clear.usage is not None and opaque.usage is not None
    assert clear.usage.input_tokens_details.text_tokens == opaque.usage.input_tokens_details.text_tokens
    streamed = client.images.generate(**ask, background="transparent", stream=True)
    (completed,) = [event for event in streamed if event.type == "image_generation.completed"]
    assert completed.usage.input_tokens_details.text_tokens == opaque.usage.input_tokens_details.text_tokens
    dalle = client.images.generate(
        model="dall-e-3", prompt="a red apple", background="transparent", response_format="b64_json"
    )
    assert dalle.data[0].revised_prompt == "a red apple"


def test_background_auto_follows_the_prompt(client: OpenAI):
    result = client.images.generate(model="tiny-sd15", prompt="a cat on a sofa", size="256x256", background="auto")
    assert result.background == "opaque"
    result = client.images.generate(
        model="tiny-sd15", prompt="a cat on a transparent background", size="256x256", background="auto"
    )
    assert result.background == "transparent"
    assert decode(result.data[0].b64_json, "png").mode == "RGBA"


def test_an_omitted_background_is_auto_as_openais_default(client: OpenAI):
    """An app that asks for a sticker, or edits a cut-out, without saying `background` gets transparency back,
    as from OpenAI; DALL·E names have no background setting and stay opaque."""
    sticker = client.images.generate(model="tiny-sd15", prompt="a cat sticker", size="256x256")
    assert sticker.background == "transparent" and decode(sticker.data[0].b64_json, "png").mode == "RGBA"
    logo = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    ImageDraw.Draw(logo).ellipse((48, 48, 208, 208), fill=(30, 90, 200, 255))
    edited = client.images.edit(model="tiny-sd15", image=png_bytes(logo), prompt=PROMPT)
    # How much of the background comes back clear is the model's doing (an unmasked edit repaints it all).
    assert edited.background == "transparent" and decode(edited.data[0].b64_json, "png", (256, 256)).mode == "RGBA"
    dalle = client.images.generate(model="dall-e-3", prompt="a cat sticker", response_format="b64_json")
    assert decode(dalle.data[0].b64_json, "png").mode == "RGB"


def test_transparent_with_jpeg_is_rejected_on_edits(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(image=png_bytes(picture()), prompt=PROMPT, background="transparent", output_format="jpeg")
    assert info.value.body["param"] == "background"


def test_variations(client: OpenAI, server):
    result = client.images.create_variation(image=png_bytes(picture()), n=2, size="256x256")
    assert len(result.data) == 2 and result.usage is None  # dall-e-2's shape: url by default, no usage
    for item in result.data:
        data = httpx.get(item.url, timeout=30).content
        check_magic(data, "png")
        assert Image.open(io.BytesIO(data)).size == (256, 256)
    result = client.images.create_variation(image=png_bytes(picture(300, 200)), response_format="b64_json")
    decode(result.data[0].b64_json, "png", (1024, 1024))


def test_json_body_with_data_urls(server):
    url = "data:image/png;base64," + base64.b64encode(png_bytes(picture())).decode()
    response = httpx.post(
        f"{server.root}/v1/images/edits",
        json={"model": "tiny-sd15", "prompt": PROMPT, "images": [{"image_url": url}], "n": 1},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    decode(response.json()["data"][0]["b64_json"], "png", (256, 256))
    response = httpx.post(
        f"{server.root}/v1/images/edits",
        json={"prompt": PROMPT, "images": [{"image_url": "https://example.com/x.png"}]},
        timeout=30,
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "images[0]"


def bomb_png() -> bytes:
    """A small file that claims 30000x30000 pixels: a 1-bit image compresses to almost nothing."""
    buffer = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("files", "param"),
    [
        ({"image": ("x.png", b"this is not an image", "image/png")}, "image"),
        ({"image": ("x.png", png_bytes(picture())[:300], "image/png")}, "image"),
        ({"image": ("bomb.png", bomb_png(), "image/png")}, "image"),
        ({"image": ("x.gif", b"GIF89a" + b"\0" * 64, "image/gif")}, "image"),
        ({"image": ("x.png", png_bytes(picture()), "image/png"), "mask": ("m.png", png_bytes(picture()), "image/png")},
         "mask"),
    ],
    ids=["not-an-image", "truncated", "decompression-bomb", "gif", "mask-without-alpha"],
)  # fmt: skip
def test_bad_uploads_are_clear_400s(server, files: dict, param: str):
    response = httpx.post(f"{server.root}/v1/images/edits", data={"prompt": PROMPT}, files=files, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("data", "files", "param", "code"),
    [
        ({}, {"image": ("x.png", png_bytes(picture()), "image/png")}, "prompt", "missing_required_parameter"),
        ({"prompt": PROMPT}, {}, "image", "missing_required_parameter"),
        ({"prompt": PROMPT, "n": "two"}, {"image": ("x.png", png_bytes(picture()), "image/png")}, "n", None),
        ({"prompt": PROMPT, "n": "11"}, {"image": ("x.png", png_bytes(picture()), "image/png")}, "n", None),
        ({"prompt": PROMPT, "style": "vivid"}, {"image": ("x.png", png_bytes(picture()), "image/png")}, "style",
         "unknown_parameter"),
        ({"prompt": PROMPT}, {"images": ("x.png", png_bytes(picture()), "image/png")}, "images", "unknown_parameter"),
        ({"prompt": PROMPT, "input_fidelity": "max"}, {"image": ("x.png", png_bytes(picture()), "image/png")},
         "input_fidelity", "invalid_value"),
        ({"prompt": PROMPT}, {"image": ("x.png", png_bytes(picture()), "image/png"),
                              "markup": ("m.png", png_bytes(picture()), "image/png")}, "markup", "unknown_parameter"),
        ({"prompt": PROMPT, "svg[model]": "gpt-5"}, {"image": ("x.png", png_bytes(picture()), "image/png")},
         "svg[model]", "unknown_parameter"),
        ({}, {"image": ("x.png", png_bytes(picture()), "image/png"), "prompt": ("p.txt", b"a cat", "text/plain")},
         "prompt", "invalid_type"),
    ],
)  # fmt: skip
def test_bad_fields_are_clear_400s(server, data: dict, files: dict, param: str, code: str | None):
    response = httpx.post(f"{server.root}/v1/images/edits", data=data, files=files or None, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    if code:
        assert error["code"] == code


def test_line_wrapped_base64_in_a_data_url_is_accepted(server):
    url = "data:image/png;base64," + base64.encodebytes(png_bytes(picture())).decode()  # a newline every 76
    response = httpx.post(
        f"{server.root}/v1/images/edits",
        json={"model": "tiny-sd15", "prompt": PROMPT, "images": [{"image_url": url}]},
        timeout=120,
    )
    assert response.status_code == 200, response.text


def test_a_malformed_multipart_body_is_an_openai_error(server):
    response = httpx.post(
        f"{server.root}/v1/images/edits", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_multipart"


def test_variations_take_one_image(server):
    files = [("image", (f"{i}.png", png_bytes(picture()), "image/png")) for i in range(2)]
    response = httpx.post(f"{server.root}/v1/images/variations", files=files, timeout=60)
    assert response.status_code == 400
    assert (response.json()["error"]["param"], response.json()["error"]["code"]) == ("image", "too_many_images")
    mask = {
        "image": ("a.png", png_bytes(picture()), "image/png"),
        "mask": ("m.png", png_bytes(hole_mask()), "image/png"),
    }
    response = httpx.post(f"{server.root}/v1/images/variations", files=mask, timeout=60)
    assert response.status_code == 400
    assert (response.json()["error"]["param"], response.json()["error"]["code"]) == ("mask", "unknown_parameter")


def test_variations_of_an_image_given_as_a_list(client: OpenAI):
    """The SDK sends a list as `image[]` parts: one is the image; more are refused with their count."""
    result = client.images.create_variation(image=[png_bytes(picture())], size="256x256", response_format="b64_json")
    assert decode(result.data[0].b64_json, "png", (256, 256))
    with pytest.raises(openai.BadRequestError) as info:
        client.images.create_variation(image=[png_bytes(picture()), png_bytes(picture())], size="256x256")
    assert info.value.code == "too_many_images" and "got 2" in info.value.message


def test_too_many_images(server):
    files = [("image[]", (f"{i}.png", png_bytes(picture(64, 64)), "image/png")) for i in range(17)]
    response = httpx.post(f"{server.root}/v1/images/edits", data={"prompt": PROMPT}, files=files, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "image"


@pytest.mark.parametrize("partial_images", [0, 1, 3])
def test_streamed_edit(client: OpenAI, partial_images: int):
    source, mask = picture(seed=8), hole_mask()
    stream = client.images.edit(
        model="tiny-flux", image=png_bytes(source), mask=png_bytes(mask), prompt=PROMPT,
        stream=True, partial_images=partial_images, output_format="webp",
    )  # fmt: skip
    events = list(stream)
    assert [event.type for event in events] == ["image_edit.partial_image"] * partial_images + ["image_edit.completed"]
    assert [event.partial_image_index for event in events[:-1]] == list(range(partial_images))
    for event in events:
        decode(event.b64_json, "webp", (256, 256))
    assert events[-1].usage.input_tokens_details.image_tokens == 16 * 16


def test_streamed_edit_errors_before_the_first_byte(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(image=png_bytes(picture()), mask=png_bytes(hole_mask(128, 128)), prompt=PROMPT, stream=True)
    assert info.value.body["param"] == "mask"
