"""OpenAI mask semantics: alpha == 0 marks the edit; everything outside the region is the original, exactly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from localimg.errors import InvalidRequestError
from localimg.imaging.masks import edit_region_from_alpha, edit_region_from_mask, keep_outside, resize_region


def mask_with_hole(size=(40, 30), hole=(10, 5, 20, 15), alpha=255) -> Image.Image:
    mask = Image.new("RGBA", size, (255, 255, 255, alpha))
    mask.paste((0, 0, 0, 0), hole)
    return mask


def noise(size, mode, seed) -> Image.Image:
    channels = len(Image.new(mode, (1, 1)).getbands())
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array)


def test_transparent_pixels_are_the_edit_region():
    region = edit_region_from_mask(mask_with_hole(), (40, 30))
    assert region.mode == "L" and region.size == (40, 30)
    values = np.asarray(region)
    assert set(np.unique(values)) == {0, 255}
    assert (values[5:15, 10:20] == 255).all()
    assert values.sum() == 255 * 10 * 10


def test_partly_transparent_pixels_are_kept():
    mask = mask_with_hole(alpha=1)  # nearly transparent, but not fully: OpenAI keeps such pixels
    assert np.asarray(edit_region_from_mask(mask, (40, 30))).sum() == 255 * 100


def test_la_and_palette_masks_work():
    la = mask_with_hole().convert("LA")
    assert np.asarray(edit_region_from_mask(la, (40, 30))).sum() == 255 * 100
    palette = Image.new("P", (40, 30), 1)
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    palette.paste(0, (0, 0, 4, 4))
    palette.info["transparency"] = 0
    assert np.asarray(edit_region_from_mask(palette, (40, 30))).sum() == 255 * 16


def test_size_mismatch_names_both_sizes():
    with pytest.raises(InvalidRequestError) as info:
        edit_region_from_mask(mask_with_hole(), (64, 64))
    error = info.value
    assert error.status == 400 and error.param == "mask" and error.code == "invalid_mask_size"
    assert "40x30" in error.message and "64x64" in error.message


def test_mask_without_alpha_explains_the_rule():
    with pytest.raises(InvalidRequestError) as info:
        edit_region_from_mask(Image.new("RGB", (40, 30), "white"), (40, 30), param="mask")
    assert info.value.code == "invalid_mask" and "no alpha channel" in info.value.message
    assert "fully transparent pixels (alpha = 0) mark the area to edit" in info.value.message


def test_opaque_mask_has_nothing_to_edit():
    with pytest.raises(InvalidRequestError) as info:
        edit_region_from_mask(Image.new("RGBA", (40, 30), (0, 0, 0, 254)), (40, 30))
    assert info.value.code == "invalid_mask" and "nothing to edit" in info.value.message


def test_image_alpha_as_region():
    image = mask_with_hole()
    region = edit_region_from_alpha(image)
    assert region is not None and np.asarray(region).sum() == 255 * 100
    assert edit_region_from_alpha(Image.new("RGBA", (8, 8), (1, 2, 3, 255))) is None
    assert edit_region_from_alpha(Image.new("RGB", (8, 8))) is None


def test_resize_region_stays_binary():
    region = edit_region_from_mask(mask_with_hole(), (40, 30))
    for size in [(80, 60), (17, 13), (1024, 768)]:
        resized = resize_region(region, size)
        assert resized.size == size and resized.mode == "L"
        assert set(np.unique(np.asarray(resized))) == {0, 255}
    assert resize_region(region, (40, 30)) is region


@pytest.mark.parametrize("original_mode, generated_mode", [("RGB", "RGB"), ("RGBA", "RGBA"), ("RGB", "RGBA")])
def test_keep_outside_is_exact(original_mode, generated_mode):
    size = (40, 30)
    original = noise(size, original_mode, seed=1)
    generated = noise(size, generated_mode, seed=2)
    region = resize_region(edit_region_from_mask(mask_with_hole(), size), size)
    result = keep_outside(original, generated, region)
    assert result.mode == generated_mode and result.size == size
    out = np.asarray(result)
    keep = np.asarray(region) == 0
    expected_outside = np.asarray(original.convert(generated_mode))
    assert (out[keep] == expected_outside[keep]).all()  # alpha included for RGBA
    assert (out[~keep] == np.asarray(generated)[~keep]).all()


def test_keep_outside_with_rgba_original_and_rgb_output():
    original = noise((16, 16), "RGBA", seed=3)
    generated = noise((16, 16), "RGB", seed=4)
    region = Image.new("L", (16, 16), 0)
    region.paste(255, (0, 0, 8, 16))
    out = np.asarray(keep_outside(original, generated, region))
    assert out.shape == (16, 16, 3)
    assert (out[:, 8:] == np.asarray(original)[:, 8:, :3]).all()
    assert (out[:, :8] == np.asarray(generated)[:, :8]).all()


def test_keep_outside_treats_any_nonzero_region_value_as_edit():
    original, generated = noise((8, 8), "RGB", 5), noise((8, 8), "RGB", 6)
    region = Image.new("L", (8, 8), 0)
    region.putpixel((3, 3), 1)
    out = np.array(keep_outside(original, generated, region))
    assert (out[3, 3] == np.asarray(generated)[3, 3]).all()
    out[3, 3] = np.asarray(original)[3, 3]
    assert (out == np.asarray(original)).all()


def test_keep_outside_refuses_different_sizes():
    with pytest.raises(ValueError, match="equal sizes"):
        keep_outside(Image.new("RGB", (8, 8)), Image.new("RGB", (8, 9)), Image.new("L", (8, 8)))
