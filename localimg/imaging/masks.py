"""OpenAI edit masks -> inpainting regions, and putting the original back outside them.

OpenAI's rule: the fully transparent pixels (alpha == 0) of the mask mark the region to edit; every other pixel,
including partly transparent ones, is kept. A region here is an "L" image, 255 = edit, 0 = keep, the convention
of diffusers' inpainting pipelines.

A mask without a single transparent pixel is refused (400) rather than answered with the unchanged original:
the client almost certainly sent the wrong file (an opaque PNG, or white-for-edit as diffusers masks are drawn).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from localimg.errors import InvalidRequestError

_EDIT = 255


def edit_region_from_mask(mask: Image.Image, size: tuple[int, int], *, param: str = "mask") -> Image.Image:
    """The region a mask marks for editing; `size` is the first image's (width, height), which the mask must equal."""
    if mask.size != tuple(size):
        raise InvalidRequestError(
            f"Invalid file '{param}': the mask is {mask.width}x{mask.height} but the image is {size[0]}x{size[1]}; "
            "the mask must have the same size as the (first) image.",
            param=param,
            code="invalid_mask_size",
        )
    alpha = _alpha(mask)
    if alpha is None:
        raise InvalidRequestError(
            f"Invalid file '{param}': the mask has no alpha channel. Use a PNG or WebP with an alpha channel whose "
            "fully transparent pixels (alpha = 0) mark the area to edit.",
            param=param,
            code="invalid_mask",
        )
    region = _transparent(alpha)
    if region is None:
        raise InvalidRequestError(
            f"Invalid file '{param}': the mask has no fully transparent pixel, so there is nothing to edit. "
            "Fully transparent pixels (alpha = 0) mark the area to edit.",
            param=param,
            code="invalid_mask",
        )
    return region


def edit_region_from_alpha(image: Image.Image) -> Image.Image | None:
    """An input image's own fully transparent pixels as the region to edit (used when no mask is sent), or None
    when it has none."""
    alpha = _alpha(image)
    return None if alpha is None else _transparent(alpha)


def resize_region(
    region: Image.Image, size: tuple[int, int], box: tuple[float, float, float, float] | None = None
) -> Image.Image:
    """`region` (or its `box` part) scaled to `size` with nearest-neighbour sampling, so it stays strictly 0/255."""
    region = region if region.mode == "L" else region.convert("L")
    return region if region.size == tuple(size) else region.resize(size, Image.Resampling.NEAREST, box=box)


def keep_outside(original: Image.Image, generated: Image.Image, region: Image.Image) -> Image.Image:
    """`generated` inside the region and exactly `original` outside it (region == 0), in `generated`'s mode.

    For RGBA output the original's alpha is kept outside the region too."""
    if not original.size == generated.size == region.size:
        raise ValueError(
            f"keep_outside needs equal sizes, got original {original.size}, generated {generated.size}, "
            f"region {region.size}"
        )
    base = original if original.mode == generated.mode else original.convert(generated.mode)
    # Binarised, so composite copies pixels and never blends: region 0 -> original, anything else -> generated.
    binary = (region if region.mode == "L" else region.convert("L")).point(lambda v: _EDIT if v else 0)
    return Image.composite(generated, base, binary)


def _alpha(image: Image.Image) -> Image.Image | None:
    if "A" in image.getbands():
        return image.getchannel("A")
    if "transparency" in image.info:
        return image.convert("RGBA").getchannel("A")
    return None


def _transparent(alpha: Image.Image) -> Image.Image | None:
    edit = np.asarray(alpha) == 0
    if not edit.any():
        return None
    return Image.fromarray(np.where(edit, _EDIT, 0).astype(np.uint8))
