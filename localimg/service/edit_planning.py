"""Edits and variations as pure functions: a validated form + decoded images -> an `ImageJob`.

The rules shared with generations (model, prompt, size, quality, output format, seeds) come from planning.py;
this module adds what only image inputs have:

- **Masks** (OpenAI's semantics): fully transparent pixels (alpha = 0) of `mask` mark the region to edit; the
  mask applies to the first image and must have its size. Without a mask, `dall-e-2` (only: its legacy rule) uses
  the fully transparent pixels of the first image as the mask; GPT image models edit the whole image. A masked
  edit runs the family's inpainting path, and every pixel outside the region is copied back from the original
  afterwards (`ImageJob.keep`).
- **`size="auto"`** (or omitted) follows the first image: its own size when the model allows it, otherwise
  scaled into the model's limits, with sides in the model's multiple that keep its aspect ratio (within 2 %) where
  any near its size do.
- **Another aspect ratio** (an explicit size, or limits the input's shape exceeds): the input and its mask are
  centre-cropped to the output's aspect, as variations are, never visibly stretched (`cover_box`).
- **`input_fidelity`** picks how far the result may move from the first image (diffusers' `strength`):

  | input_fidelity | without mask (image-to-image) | inside a mask (inpainting) |
  |---|---|---|
  | `low` (default) | 0.75 | 1.0 (the region is repainted from noise) |
  | `high` | 0.45 | 0.85 |

  The `strength` extension overrides it. The denoising step count is the quality preset's, whatever the strength.
- **Several images**: images after the first are references, accepted only by models whose `max_input_images`
  in models.toml allows them. A model may name a `references_model` that runs such edits instead (e.g. FLUX.1
  schnell routing them to FLUX.1 Kontext); otherwise a 400 says how many the model takes (never dropped).
- **Variations** (dall-e-2's legacy endpoint; other OpenAI ids are refused, local names served): image-to-image
  of the (centre-cropped, square) image with an empty prompt at strength 0.7, answered in dall-e-2's shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from localimg.backends.base import EditInputs, GenerationPlan
from localimg.errors import InvalidRequestError
from localimg.imaging.alpha import flatten, is_cutout
from localimg.imaging.masks import edit_region_from_alpha, edit_region_from_mask, resize_region
from localimg.registry import MAX_INPUT_IMAGES, ImageSize, ModelSpec
from localimg.service.planning import (
    MAX_ASPECT,
    ApiStyle,
    ImageJob,
    KeepRegion,
    api_style,
    build_plan,
    check_prompt,
    check_response_format,
    draw_seeds,
    image_tokens,
    is_openai_gpt_name,
    resolve_model,
    resolve_output,
    resolve_quality,
    resolve_response_format,
    resolve_size,
    resolve_stream,
)

if TYPE_CHECKING:
    from localimg.protocol import ImageEditRequest, ImageVariationRequest
    from localimg.registry import Registry

STRENGTH = {("low", False): 0.75, ("high", False): 0.45, ("low", True): 1.0, ("high", True): 0.85}
VARIATION_STRENGTH = 0.7
Box = tuple[float, float, float, float]  # left, top, right, bottom in input pixels


@dataclass(frozen=True)
class InputImage:
    """A decoded upload and the parameter it came in (`image`, `image[1]`, ...), for error messages."""

    param: str
    image: Image.Image


def plan_edit(
    request: ImageEditRequest,
    images: Sequence[InputImage],
    mask: InputImage | None,
    registry: Registry,
    random_seed: Callable[[], int],
) -> ImageJob:
    """Resolve an edits request. Raises InvalidRequestError naming the offending parameter."""
    requested_model = request.model or registry.default_model
    spec = resolve_model(requested_model, registry)
    style = api_style(requested_model)
    if style == "dall-e-3":
        raise InvalidRequestError(
            "Image edits are not supported by dall-e-3; use dall-e-2 or a gpt-image model.",
            param="model",
            code="invalid_value",
        )
    check_prompt(request.prompt, style)
    stream = resolve_stream(
        request.stream, request.partial_images, style,
        size=request.size, quality=request.quality, background=request.background,
    )  # fmt: skip
    if style == "dall-e-2" and request.input_fidelity is not None:
        raise InvalidRequestError(
            "Unknown parameter: 'input_fidelity'.", param="input_fidelity", code="unknown_parameter"
        )
    if style == "dall-e-2" and len(images) > 1:
        raise InvalidRequestError(
            f"dall-e-2 edits take exactly one image; got {len(images)}.", param="image", code="too_many_images"
        )
    check_response_format(request.response_format, request.model)
    spec = _model_for_images(images, spec, registry)
    first = images[0].image
    size = size_for_input(first.size, spec) if request.size in (None, "auto") and style == "gpt-image" else None
    size = size or resolve_size(request.size, style, spec)
    crop = cover_box(first.size, size)
    region_at_size = _region_to_edit(first, mask, style, size, crop)
    quality = resolve_quality(request.quality, style, spec)
    original = _cover(first, size, crop)
    cutout = style == "gpt-image" and is_cutout(first)  # as sent, so the answer does not depend on `size`
    output = resolve_output(
        request.output_format, request.output_compression, request.background, style, request.prompt, cutout=cutout
    )
    strength = request.strength or STRENGTH[(request.input_fidelity or "low", region_at_size is not None)]
    flat = flatten(original)
    edit = EditInputs(
        images=(flat, *(flatten(item.image) for item in images[1:])), mask=region_at_size, strength=strength
    )
    # What is copied back outside the mask: what the model saw, unless the output keeps the input's transparency.
    kept = original if output.background == "transparent" else flat
    plan = build_plan(request, spec, size, quality, request.n or 1, stream, random_seed, edit)
    return ImageJob(
        spec=spec,
        api_style=style,
        plan=plan,
        size=size,
        quality=quality,
        output=output,
        response_format=resolve_response_format(request.response_format, style),
        safety_identifier=request.safety_identifier or request.user or None,
        keep=None if region_at_size is None else KeepRegion(original=kept, region=region_at_size),
        cutout=original if cutout else None,
        input_image_tokens=sum(image_tokens(ImageSize(*item.image.size)) for item in images),
        stream=stream,
    )


def plan_variation(
    request: ImageVariationRequest, image: InputImage, registry: Registry, random_seed: Callable[[], int]
) -> ImageJob:
    """Resolve a variations request: dall-e-2's sizes and response shape, whatever local model serves it."""
    requested_model = request.model or "dall-e-2"
    spec = resolve_model(requested_model, registry)
    if requested_model == "dall-e-3" or is_openai_gpt_name(requested_model):
        raise InvalidRequestError(
            f"Invalid value: '{requested_model}'. Variations are only supported by dall-e-2 (or a local model name).",
            param="model",
            code="invalid_value",
        )
    size = resolve_size(request.size, "dall-e-2", spec)
    quality = spec.auto_quality
    preset = spec.quality[quality]
    square = _cover(flatten(image.image), size, cover_box(image.image.size, size))
    plan = GenerationPlan(
        model=spec.name,
        prompt="",
        width=size.width,
        height=size.height,
        steps=preset.steps,
        guidance_scale=preset.guidance,
        seeds=draw_seeds(request.seed, request.n or 1, random_seed),
        max_sequence_length=preset.max_sequence_length,
        edit=EditInputs(images=(square,), strength=VARIATION_STRENGTH),
    )
    return ImageJob(
        spec=spec,
        api_style="dall-e-2",
        plan=plan,
        size=size,
        quality=quality,
        output=resolve_output(None, None, "opaque", "dall-e-2"),
        response_format=resolve_response_format(request.response_format, "dall-e-2"),
        safety_identifier=request.user or None,
        input_image_tokens=image_tokens(ImageSize(*image.image.size)),
    )


def size_for_input(input_size: tuple[int, int], spec: ModelSpec) -> ImageSize:
    """The output size for `size="auto"`: the input's own size when the model and the API allow it, otherwise the
    input's aspect ratio (at most 3:1, as any size must be; the edit crops the rest) scaled into the model's
    limits: of the sizes near that with sides in the model's multiples, the nearest in area whose aspect is within
    `ASPECT_TOLERANCE` of the input's (so that the input is scaled whole, not cropped), else the nearest in aspect."""
    width, height = input_size
    width, height = min(width, MAX_ASPECT * height), min(height, MAX_ASPECT * width)
    limits = spec.limits
    step = math.lcm(16, limits.multiple_of)
    scale = min(1.0, math.sqrt(limits.max_pixels / (width * height)), limits.max_side / max(width, height))
    scale = max(scale, limits.min_side / min(width, height))
    target_width, target_height = width * scale, height * scale
    ratio = target_width / target_height

    def fits(size: ImageSize) -> bool:
        return limits.fits(size) and max(size.width, size.height) <= MAX_ASPECT * min(size.width, size.height)

    def cost(size: ImageSize) -> tuple[float, float]:
        stretch = abs(math.log(size.width / size.height / ratio))
        area = abs(math.log(size.pixels / (target_width * target_height)))
        return max(0.0, stretch - math.log(ASPECT_TOLERANCE)), area

    # Rounding each side on its own can miss the aspect by more than the tolerance on a small input (300x200 made
    # 304x192, 5.5 % off, and lost rows to the crop), so widths within 10 % either way each try both heights.
    widths = range(
        max(step, math.floor(0.9 * target_width / step) * step), math.ceil(1.1 * target_width / step) * step + 1, step
    )
    candidates = [
        ImageSize(w, h)
        for w in widths
        for h in {max(step, math.floor(w / ratio / step) * step), max(step, math.ceil(w / ratio / step) * step)}
    ]
    fitting = [size for size in candidates if fits(size)]
    # Only limits that contradict each other leave nothing near the input's shape; the default size always fits.
    return min(fitting, key=cost) if fitting else spec.default_size


def _model_for_images(images: Sequence[InputImage], spec: ModelSpec, registry: Registry) -> ModelSpec:
    """`spec`, or its `references_model` when the edit sends more images than `spec` takes."""
    if len(images) > MAX_INPUT_IMAGES:
        raise InvalidRequestError(
            f"Too many images: got {len(images)}, at most {MAX_INPUT_IMAGES} are allowed.",
            param="image",
            code="too_many_images",
        )
    if len(images) > spec.max_input_images and spec.references_model is not None:
        spec = registry.resolve(spec.references_model) or spec
    if len(images) > spec.max_input_images:
        raise InvalidRequestError(
            f"Model '{spec.name}' takes {spec.max_input_images} input image(s) but {len(images)} were given; "
            "send fewer images, or use a model declared with reference images in models.toml.",
            param="image",
            code="too_many_images",
        )
    return spec


def _region_to_edit(
    first: Image.Image, mask: InputImage | None, style: ApiStyle, size: ImageSize, crop: Box
) -> Image.Image | None:
    """The region to repaint at the output size (255 = repaint), or None to edit the whole image."""
    output_size = (size.width, size.height)
    if mask is not None:
        region = resize_region(edit_region_from_mask(mask.image, first.size, param=mask.param), output_size, crop)
        if region.getextrema()[1] == 0:
            raise InvalidRequestError(
                f"Invalid 'mask': its transparent area lies outside the centred part of the image that an edit at "
                f"{size.width}x{size.height} keeps, so there is nothing to edit. Send an image with the output's "
                "aspect ratio, or another size.",
                param=mask.param,
                code="invalid_mask",
            )
        return region
    if style != "dall-e-2":
        return None  # GPT image models edit the whole image, and a cut-out's transparency is its look
    region = edit_region_from_alpha(first)  # dall-e-2's legacy rule: the image's transparent pixels
    region = None if region is None else resize_region(region, output_size, crop)
    return region if region is not None and region.getextrema()[1] else None


# Within 2 % of the output's aspect ratio an input is scaled whole: a stretch that small is invisible, and cropping
# for it would cut real content off its borders (it is what rounding sizes to multiples of 16 causes).
ASPECT_TOLERANCE = 1.02


def cover_box(input_size: tuple[int, int], size: ImageSize) -> Box:
    """The part of an input of `input_size` that an output of `size` shows: the whole input when their aspect
    ratios agree, else its centred part with the output's aspect (cropped, never visibly stretched)."""
    width, height = input_size
    ratio = (width / height) / (size.width / size.height)
    if 1 / ASPECT_TOLERANCE <= ratio <= ASPECT_TOLERANCE:
        return (0.0, 0.0, float(width), float(height))
    scale = min(width / size.width, height / size.height)
    crop_w, crop_h = size.width * scale, size.height * scale
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    return (left, top, left + crop_w, top + crop_h)


def _cover(image: Image.Image, size: ImageSize, box: Box) -> Image.Image:
    if image.size == (size.width, size.height):
        return image
    return image.resize((size.width, size.height), Image.Resampling.LANCZOS, box=box)
