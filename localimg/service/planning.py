"""gpt-image semantics as pure functions: a validated wire request -> an `ImageJob` with every default resolved.

Every rule about size, quality, output format, background, `n` and seeds lives here, so a reader can follow
each parameter from the route to the pipeline call in one hop. Nothing here touches torch or HTTP.

Which API a request speaks is decided by the model id the client sent: `dall-e-2` and `dall-e-3` keep their
legacy rules (fixed sizes, `response_format`, `style`); every other id (gpt-image-*, local model names)
follows the gpt-image rules.

Streaming (`stream=true`, gpt-image models only) with `partial_images` = k shows k previews taken at distinct
denoising steps before the last one, so it needs at least k + 1 steps: a streamed job whose resolved steps are
fewer is raised to k + 1 steps (`steps_for_partials`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from localimg.backends.base import EditInputs, GenerationPlan
from localimg.errors import ImageGenerationUserError, InvalidRequestError, quoted_list
from localimg.imaging.alpha import asks_for_transparency
from localimg.protocol import ImageGenerateRequest, OutputFormat, ResponseFormat
from localimg.registry import ImageSize, ModelSpec, Registry

if TYPE_CHECKING:
    from PIL import Image

ApiStyle = Literal["gpt-image", "dall-e-2", "dall-e-3"]

GPT_IMAGE_SIZES = ("1024x1024", "1536x1024", "1024x1536")
DALLE_SIZES: dict[ApiStyle, tuple[str, ...]] = {
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
}
DALLE_DEFAULT_SIZE = "1024x1024"  # both DALL·E models, every endpoint
PROMPT_MAX_CHARS: dict[ApiStyle, int] = {"gpt-image": 32_000, "dall-e-2": 1_000, "dall-e-3": 4_000}
# DALL·E quality names map onto our presets: "hd" is the better one.
DALLE_QUALITY: dict[ApiStyle, dict[str, str]] = {
    "dall-e-2": {"standard": "medium"},
    "dall-e-3": {"standard": "medium", "hd": "high"},
}
MAX_ASPECT = 3.0
SEED_MODULUS = 2**63
# Image tokens are counted as the 16x16-pixel patches the image is made of (FLUX's and SD3's transformer
# tokens); a 1024x1024 image is 4096 tokens. OpenAI counts its own differently; this is documented.
IMAGE_TOKEN_PATCH = 16
MAX_PARTIAL_IMAGES = 3


@dataclass(frozen=True)
class OutputOptions:
    format: OutputFormat
    compression: int  # 0-100; meaningful for jpeg/webp, always 100 for png
    background: Literal["opaque", "transparent"]


@dataclass(frozen=True, eq=False)
class KeepRegion:
    """After a masked edit, pixels where `region` is 0 are copied back from `original` (both at the output size)."""

    original: Image.Image  # the first input image, in its own mode (RGBA when it has alpha)
    region: Image.Image  # "L": 255 = edited, 0 = kept
    # A transparent output mattes the kept pixels too only when they are the service's own key-colour canvas (to
    # come out clear); a client's kept pixels come back exactly as they were, alpha included.
    matte_kept: bool = False


@dataclass(frozen=True)
class StreamOptions:
    """How to stream a job. Stream events echo the requested settings, which may be "auto"."""

    partial_images: int  # previews per image, 0-3
    size: str
    quality: str
    background: str


@dataclass(frozen=True)
class ImageJob:
    """A generation request with everything resolved: what to run, and how to answer."""

    spec: ModelSpec
    api_style: ApiStyle
    plan: GenerationPlan
    size: ImageSize
    quality: str  # the resolved preset name: low | medium | high (| xhigh | max where models.toml has them)
    output: OutputOptions
    response_format: ResponseFormat
    safety_identifier: str | None
    keep: KeepRegion | None = None  # masked edits only
    cutout: Image.Image | None = None  # edits: the first input at the output size, RGBA, when it is a cut-out
    input_image_tokens: int = 0  # edits: the input images, counted like output images
    stream: StreamOptions | None = None  # None: answer with one JSON response


def plan_generation(request: ImageGenerateRequest, registry: Registry, random_seed: Callable[[], int]) -> ImageJob:
    """Resolve a generations request. Raises InvalidRequestError naming the offending parameter."""
    requested_model = request.model or registry.default_model
    spec = resolve_model(requested_model, registry)
    style = api_style(requested_model)
    check_prompt(request.prompt, style)
    n = request.n or 1
    if style == "dall-e-3" and n != 1:
        raise InvalidRequestError("You must provide n=1 for this model.")  # OpenAI names no param or code here
    _check_style_only_params(request, style)
    stream = resolve_stream(
        request.stream, request.partial_images, style,
        size=request.size, quality=request.quality, background=request.background,
    )  # fmt: skip
    size = resolve_size(request.size, style, spec)
    quality = resolve_quality(request.quality, style, spec)
    output = resolve_output(
        request.output_format, request.output_compression, request.background, style, request.prompt
    )
    plan = build_plan(request, spec, size, quality, n, stream, random_seed)
    return ImageJob(
        spec=spec,
        api_style=style,
        plan=plan,
        size=size,
        quality=quality,
        output=output,
        response_format=resolve_response_format(request.response_format, style),
        safety_identifier=request.safety_identifier or request.user or None,
        stream=stream,
    )


class PlanParams(Protocol):
    """The request fields every text-guided job has (generations and edits alike)."""

    prompt: str
    num_inference_steps: int | None
    guidance_scale: float | None
    seed: int | None
    negative_prompt: str | None


def build_plan(
    params: PlanParams,
    spec: ModelSpec,
    size: ImageSize,
    quality: str,
    n: int,
    stream: StreamOptions | None,
    random_seed: Callable[[], int],
    edit: EditInputs | None = None,
) -> GenerationPlan:
    """The pipeline job: the quality preset, overridden by the extensions the request gave."""
    preset = spec.quality[quality]
    return GenerationPlan(
        model=spec.name,
        prompt=params.prompt,
        width=size.width,
        height=size.height,
        steps=steps_for_partials(params.num_inference_steps or preset.steps, stream),
        guidance_scale=preset.guidance if params.guidance_scale is None else params.guidance_scale,
        seeds=draw_seeds(params.seed, n, random_seed),
        negative_prompt=params.negative_prompt or None,
        max_sequence_length=preset.max_sequence_length,
        edit=edit,
    )


def api_style(model_id: str) -> ApiStyle:
    return model_id if model_id in ("dall-e-2", "dall-e-3") else "gpt-image"  # type: ignore[return-value]


def resolve_model(model_id: str, registry: Registry) -> ModelSpec:
    spec = registry.resolve(model_id)
    if spec is None:
        raise ImageGenerationUserError(
            f"The model '{model_id}' does not exist. Available models: {', '.join(registry.public_ids())}.",
            param="model",
            code="invalid_value",
        )
    return spec


def check_prompt(prompt: str, style: ApiStyle) -> None:
    limit = PROMPT_MAX_CHARS[style]
    if len(prompt) > limit:
        raise InvalidRequestError(
            f"Invalid 'prompt': string too long. Expected a string with maximum length {limit}, "
            f"but got a string with length {len(prompt)} instead.",
            param="prompt",
            code="string_above_max_length",
        )


def _check_style_only_params(request: ImageGenerateRequest, style: ApiStyle) -> None:
    """`response_format` and `style` are DALL·E parameters; OpenAI's gpt-image models refuse them by name."""
    check_response_format(request.response_format, request.model)
    if request.style is not None and style != "dall-e-3":
        raise InvalidRequestError("Unknown parameter: 'style'.", param="style", code="unknown_parameter")


def is_openai_gpt_name(model_id: str | None) -> bool:
    """Whether the client named one of OpenAI's GPT image models (as opposed to DALL·E, a local model's own name,
    or none at all)."""
    return model_id is not None and model_id.startswith(("gpt-image", "chatgpt-image"))


def check_response_format(response_format: ResponseFormat | None, model_id: str | None) -> None:
    """OpenAI's GPT image models refuse `response_format` by name, and so do their names here. Other requests may
    send it: one naming no model (the API's default model used to be dall-e-2, and code written then sends
    `prompt` and `response_format` only), and one naming a local model, which OpenAI has no rule for (clients made
    for OpenAI-compatible servers, such as the AI SDK's, send `response_format` whatever the model)."""
    if response_format is not None and is_openai_gpt_name(model_id):
        raise InvalidRequestError(
            "Unknown parameter: 'response_format'.", param="response_format", code="unknown_parameter"
        )


def resolve_stream(
    stream: bool | None,
    partial_images: int | None,
    style: ApiStyle,
    *,
    size: str | None,
    quality: str | None,
    background: str | None,
) -> StreamOptions | None:
    """None unless `stream` is true. DALL·E models do not stream; `partial_images` is 0-3 (ignored unless
    streaming, as OpenAI does)."""
    if not stream:
        return None
    if style != "gpt-image":
        raise InvalidRequestError(
            f"Streaming is not supported for model '{style}'.", param="stream", code="invalid_value"
        )
    count = partial_images or 0
    if not 0 <= count <= MAX_PARTIAL_IMAGES:
        above = count > MAX_PARTIAL_IMAGES
        raise InvalidRequestError(
            f"Invalid 'partial_images': integer {'above maximum' if above else 'below minimum'} value. Expected a "
            f"value {'<=' if above else '>='} {MAX_PARTIAL_IMAGES if above else 0}, but got {count} instead.",
            param="partial_images",
            code=f"integer_{'above_max' if above else 'below_min'}_value",
        )
    return StreamOptions(count, size or "auto", quality or "auto", background or "auto")


def steps_for_partials(steps: int, stream: StreamOptions | None) -> int:
    """Each preview is taken at its own step before the last one: a streamed job runs at least k + 1 steps."""
    return steps if stream is None else max(steps, stream.partial_images + 1)


def resolve_size(text: str | None, style: ApiStyle, spec: ModelSpec) -> ImageSize:
    """`auto`/None -> the model's default size; otherwise a size the API style and the model both allow."""
    if style != "gpt-image":
        allowed = DALLE_SIZES[style]
        if text is None or text == "auto":
            text = DALLE_DEFAULT_SIZE  # then checked against the model like a size the client sent
        if text not in allowed:
            raise _invalid_value(text, [*allowed], param="size")
        size = ImageSize.parse(text)
        assert size is not None
        _check_model_limits(size, text, spec, InvalidRequestError)
        return size
    if text is None or text == "auto":
        return spec.default_size
    size = ImageSize.parse(text)
    if size is None or size.width == 0 or size.height == 0:
        raise _size_error(
            f"Invalid size '{text}'. Expected WIDTHxHEIGHT, for example '1536x1024', or one of "
            f"{quoted_list([*GPT_IMAGE_SIZES, 'auto'])}."
        )
    if size.width % 16 or size.height % 16:
        raise _size_error(f"Invalid size '{text}'. Width and height must both be divisible by 16.")
    if max(size.width, size.height) > MAX_ASPECT * min(size.width, size.height):
        raise _size_error(f"Invalid size '{text}'. The aspect ratio must be between 1:3 and 3:1.")
    _check_model_limits(size, text, spec, ImageGenerationUserError)
    return size


def _size_error(message: str) -> InvalidRequestError:
    """A free-form GPT size refused, typed as the live API types it."""
    return ImageGenerationUserError(message, param="size", code="invalid_value")


def _check_model_limits(size: ImageSize, text: str, spec: ModelSpec, error: type[InvalidRequestError]) -> None:
    limits = spec.limits
    if not limits.fits(size):
        raise error(
            f"Invalid size '{text}'. Model '{spec.name}' supports sides from {limits.min_side} to "
            f"{limits.max_side} pixels and at most {limits.max_pixels} pixels in total.",
            param="size",
            code="invalid_value",
        )
    if not limits.divides(size):
        raise error(
            f"Invalid size '{text}'. Model '{spec.name}' needs width and height divisible by {limits.multiple_of}.",
            param="size",
            code="invalid_value",
        )


def resolve_quality(text: str | None, style: ApiStyle, spec: ModelSpec) -> str:
    """The preset to run: `auto`/None -> the model's auto preset; DALL·E names map onto presets."""
    if text is None or text == "auto":
        return spec.auto_quality
    if style == "gpt-image":
        if text not in spec.quality:
            raise _invalid_value(text, [*spec.quality, "auto"], param="quality")
        return text
    mapping = DALLE_QUALITY[style]
    if text not in mapping:
        raise _invalid_value(text, [*mapping, "auto"], param="quality")
    return mapping[text]


def resolve_output(
    output_format: OutputFormat | None,
    compression: int | None,
    background: str | None,
    style: ApiStyle,
    prompt: str = "",
    *,
    cutout: bool = False,
) -> OutputOptions:
    """Format, compression and background. `background="auto"` is transparent when the format can carry alpha
    and the prompt asks for it (imaging.alpha.asks_for_transparency) or the edited image is a cut-out (`cutout`:
    it has fully transparent pixels, and an edited logo or sticker stays one); otherwise opaque. An omitted
    `background` is OpenAI's default: `auto` for gpt-image models, opaque for DALL·E ones (which have no such
    setting)."""
    background = background or ("auto" if style == "gpt-image" else "opaque")
    fmt: OutputFormat = output_format or "png"
    if fmt == "png" and compression is not None and compression < 100:
        raise InvalidRequestError(
            "Compression less than 100 is not supported for PNG output format.",
            param="output_compression",
            code="invalid_png_output_compression",
        )
    if background == "transparent" and fmt == "jpeg":
        raise InvalidRequestError(
            "Transparent background requires output_format to be png or webp.",
            param="background",
            code="invalid_value",
        )
    transparent = background == "transparent" or (
        background == "auto" and fmt != "jpeg" and (cutout or asks_for_transparency(prompt))
    )
    return OutputOptions(
        format=fmt,
        compression=100 if compression is None else compression,
        background="transparent" if transparent else "opaque",
    )


def resolve_response_format(requested: ResponseFormat | None, style: ApiStyle) -> ResponseFormat:
    """What a response carries when the request does not say: URLs for DALL·E models, as OpenAI's default."""
    return requested or ("b64_json" if style == "gpt-image" else "url")


def draw_seeds(seed: int | None, n: int, random_seed: Callable[[], int]) -> tuple[int, ...]:
    """One seed per image: consecutive from the given (or a random) seed, so image i of n is reproducible."""
    base = random_seed() if seed is None else seed
    return tuple((base + i) % SEED_MODULUS for i in range(n))


def image_tokens(size: ImageSize) -> int:
    return (size.width // IMAGE_TOKEN_PATCH) * (size.height // IMAGE_TOKEN_PATCH)


def _invalid_value(value: str, allowed: Sequence[str], *, param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid value: '{value}'. Supported values are: {quoted_list(tuple(allowed))}.",
        param=param,
        code="invalid_value",
    )
