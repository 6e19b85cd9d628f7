"""Key-colour matting on synthetic images with a known foreground, and the transparency helpers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from localimg.imaging.alpha import (
    KeyColourMatting,
    Matting,
    asks_for_transparency,
    key_canvas,
    subject_region,
    transparency_prompt,
)

GREEN = (0, 255, 0)


def disc_over_key(fg, key=GREEN, size=128, radius=40, noise=0.0, seed=0, supersample=8):
    """A disc of colour `fg` with an exactly anti-aliased edge composited over `key`; returns (image, coverage)."""
    n = size * supersample
    ys, xs = np.mgrid[0:n, 0:n] + 0.5
    inside = (xs - n / 2) ** 2 + (ys - n / 2) ** 2 <= (radius * supersample) ** 2
    coverage = inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    pixels = coverage[..., None] * np.array(fg) + (1 - coverage[..., None]) * np.array(key)
    pixels += np.random.default_rng(seed).normal(0.0, noise, pixels.shape)
    return Image.fromarray(np.rint(np.clip(pixels, 0, 255)).astype(np.uint8)), coverage


FOREGROUNDS = [(220, 30, 40), (20, 20, 20), (245, 245, 245), (40, 60, 200), (230, 180, 140)]


@pytest.mark.parametrize("noise", [0.0, 4.0])
@pytest.mark.parametrize("fg", FOREGROUNDS)
def test_alpha_in_known_regions_and_soft_edges(fg, noise):
    image, coverage = disc_over_key(fg, noise=noise)
    out = KeyColourMatting().matte(image)
    assert out.mode == "RGBA" and out.size == image.size
    alpha = np.asarray(out)[..., 3].astype(int)
    assert (alpha[coverage == 1] == 255).all()
    assert (alpha[coverage == 0] == 0).all()
    middle = (coverage >= 0.25) & (coverage <= 0.75)
    assert middle.sum() > 50
    assert ((alpha[middle] > 0) & (alpha[middle] < 255)).all()
    edge = (coverage > 0) & (coverage < 1)
    # The noise floor at both ends of the ramp bends alpha a little; it stays close to the true coverage.
    assert np.abs(alpha[edge] / 255 - coverage[edge]).mean() < 0.1


@pytest.mark.parametrize("noise", [0.0, 4.0])
@pytest.mark.parametrize("fg", FOREGROUNDS)
def test_no_key_colour_fringe(fg, noise):
    image, coverage = disc_over_key(fg, noise=noise)
    out = np.asarray(KeyColourMatting().matte(image)).astype(int)
    visible_edge = (out[..., 3] > 0) & (coverage < 1)
    assert visible_edge.sum() > 50
    tolerance = 4 + 4 * noise
    assert (out[visible_edge][:, 1] <= fg[1] + tolerance).all()  # green no higher than the foreground's
    # and the colour of edge pixels is the foreground's, not a mix with the key
    assert np.abs(out[visible_edge][:, :3] - np.array(fg)).max() <= tolerance
    assert (out[out[..., 3] == 0][:, :3] == 0).all()  # no key colour hides under transparent pixels


def test_textured_foreground_keeps_its_texture_inside():
    image, coverage = disc_over_key((200, 40, 40))
    pixels = np.asarray(image).copy()
    stripes = (np.arange(128) // 4 % 2 == 0)[None, :] & (coverage == 1)
    pixels[stripes] = (40, 40, 200)
    out = np.asarray(KeyColourMatting().matte(Image.fromarray(pixels)))
    interior = coverage == 1
    assert (out[interior][:, 3] == 255).all()
    assert (out[interior][:, :3] == pixels[interior]).all()


def test_other_key_colours():
    image, coverage = disc_over_key((230, 200, 40), key=(0, 0, 255))
    out = np.asarray(KeyColourMatting(key=(0, 0, 255)).matte(image)).astype(int)
    assert (out[coverage == 1][:, 3] == 255).all() and (out[coverage == 0][:, 3] == 0).all()
    visible_edge = (out[..., 3] > 0) & (coverage < 1)
    assert (out[visible_edge][:, 2] <= 40 + 4).all()


def test_flat_key_canvas_becomes_fully_transparent():
    out = np.asarray(KeyColourMatting().matte(key_canvas((64, 32))))
    assert out.shape == (32, 64, 4) and not out.any()


def test_thresholds_are_validated():
    with pytest.raises(ValueError):
        KeyColourMatting(low=100, high=50)


def test_key_colour_matting_is_a_matting():
    matting: Matting = KeyColourMatting()
    assert matting.matte(Image.new("RGB", (16, 16), (255, 0, 0))).getpixel((0, 0)) == (255, 0, 0, 255)


def test_key_canvas():
    canvas = key_canvas((48, 32))
    assert canvas.mode == "RGB" and canvas.size == (48, 32)
    assert canvas.getcolors() == [(48 * 32, GREEN)]
    assert key_canvas((8, 8), (255, 0, 255)).getpixel((0, 0)) == (255, 0, 255)


@pytest.mark.parametrize("size", [(1024, 1024), (1536, 1024), (512, 768), (64, 64)])
def test_subject_region_is_a_centred_ellipse_with_a_margin(size):
    width, height = size
    region = subject_region(size)
    values = np.asarray(region)
    assert region.mode == "L" and region.size == size
    assert set(np.unique(values)) == {0, 255}
    assert values[height // 2, width // 2] == 255
    border = np.concatenate([values[0], values[-1], values[:, 0], values[:, -1]])
    assert not border.any()
    assert not values[: height // 20].any() and not values[:, : width // 20].any()
    assert 0.55 < (values == 255).mean() < 0.785  # most of the frame; a full inscribed ellipse is pi/4


def test_transparency_prompt():
    text = transparency_prompt("A red apple.")
    assert text.endswith(": A red apple.")  # after the instruction, which a truncating text encoder then keeps
    assert "pure green (#00FF00) background" in text and "no shadows" in text
    assert "#FF00FF" in transparency_prompt("a cat", (255, 0, 255))
    assert "#123456" in transparency_prompt("a cat", (0x12, 0x34, 0x56))


@pytest.mark.parametrize(
    "prompt",
    [
        "a cat, transparent background",
        "Logo on a Transparent Background",
        "icon of a rocket with transparent bg",
        "a fox, background transparent",
        "the background should be transparent",
        "a mug with no background",
        "product shot without background",
        "a robot without any background",
        "a sticker of a happy cloud",
        "STICKER: pizza slice",
        "cutout of a dog",
        "a cut-out of a chair",
        "png with alpha of a leaf",
        "WebP with transparency showing a shoe",
        "a transparent PNG of a star",
        "an emoji with an alpha channel",
        "a vase, background removed",
        "remove the background, keep the lamp",
    ],
)
def test_asks_for_transparency(prompt):
    assert asks_for_transparency(prompt)


@pytest.mark.parametrize(
    "prompt",
    [
        "a transparent glass vase on a table",
        "a translucent jellyfish in the deep sea",
        "a forest in the background",
        "a blurred background with bokeh",
        "a laptop covered in stickers",
        "paper cutout style illustration of a city",
        "a cutout style collage",
        "a quiet room, no background noise",
        "a studio portrait, no background people",
        "a transparently honest face",
        "background music notes floating",
        "the alpha male of the wolf pack",
        "",
    ],
)
def test_does_not_ask_for_transparency(prompt):
    assert not asks_for_transparency(prompt)


def test_a_cutout_is_mostly_background_not_a_rounded_corner():
    from PIL import ImageDraw

    from localimg.imaging.alpha import is_cutout

    icon = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
    ImageDraw.Draw(icon).rounded_rectangle((0, 0, 511, 511), radius=20, fill=(30, 90, 200, 255))
    assert not is_cutout(icon)  # a few transparent corner pixels
    logo = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
    ImageDraw.Draw(logo).ellipse((128, 128, 383, 383), fill=(200, 30, 30, 255))
    assert is_cutout(logo) and not is_cutout(logo.convert("RGB"))
