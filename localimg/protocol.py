"""OpenAI Images API wire models: what the official SDKs send and parse. Pydantic only.

Names and shapes follow OpenAI's API exactly (see shared/spec/openai-images-api.md). Requests are strict
(no coercion of "2" to 2) and reject unknown keys by name, as the live API does. JSON `null` means "not
given". Value rules that depend on the model (sizes, quality names, prompt length) live in
service/planning.py, not here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

OutputFormat = Literal["png", "jpeg", "webp"]
Background = Literal["transparent", "opaque", "auto"]
ResponseFormat = Literal["url", "b64_json"]


class _Request(BaseModel):
    @field_validator("*")
    @classmethod
    def _unicode_only(cls, value: object) -> object:
        """JSON can escape half of a UTF-16 pair ("\\ud800"; a JavaScript string cut mid-emoji), which no UTF-8
        text holds: refused as pydantic refuses it in constrained strings, not left to fail when echoed."""
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise PydanticCustomError("string_unicode", "the string is not valid Unicode") from None
        return value


class _ImageParams(_Request):
    """The parameters generations and edits share, plus localimg's extensions (sent via the SDK's `extra_body`).
    Unknown keys are rejected by name, as the live API does."""

    model_config = ConfigDict(strict=True, extra="forbid")

    prompt: str = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1)  # "" is an unset config value, not "the default"
    n: int | None = Field(default=None, ge=1, le=10)
    quality: str | None = None
    size: str | None = None
    response_format: ResponseFormat | None = None
    output_format: OutputFormat | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    background: Background | None = None
    moderation: Literal["low", "auto"] | None = None
    stream: bool | None = None
    partial_images: int | None = Field(default=None, ge=0, le=3)
    user: str | None = None
    safety_identifier: str | None = None
    # gpt-image-2.5's planning effort, independent of quality. No local model plans before it draws, so it is
    # accepted and has no effect (the spec allows exactly this), keeping apps written for 2.5 working.
    complexity: Literal["low", "medium", "high"] | None = None
    # Extensions: not OpenAI parameters.
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    negative_prompt: str | None = None
    num_inference_steps: int | None = Field(default=None, ge=1, le=500)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=100.0)


class ImageGenerateRequest(_ImageParams):
    """Body of `POST /v1/images/generations` (JSON: strict types, no "2" for 2)."""

    style: Literal["vivid", "natural"] | None = None


class ImageEditRequest(_ImageParams):
    """The text fields of `POST /v1/images/edits`; the files travel beside them. Multipart values all arrive as
    strings, so numbers and booleans are parsed from text (`"2"` -> 2, `"true"` -> True); the JSON variant is
    validated strictly by passing `strict=True`."""

    model_config = ConfigDict(strict=False, extra="forbid")

    input_fidelity: Literal["high", "low"] | None = None
    # Extension: overrides what input_fidelity implies.
    strength: float | None = Field(default=None, gt=0.0, le=1.0)


class ImageVariationRequest(_Request):
    """The text fields of `POST /v1/images/variations` (dall-e-2's legacy endpoint), plus `seed`."""

    model_config = ConfigDict(strict=False, extra="forbid")

    model: str | None = Field(default=None, min_length=1)
    n: int | None = Field(default=None, ge=1, le=10)
    size: str | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class InputTokensDetails(BaseModel):
    text_tokens: int
    image_tokens: int


class OutputTokensDetails(BaseModel):
    text_tokens: int
    image_tokens: int


class Usage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ImagesResponse(BaseModel):
    """The non-streaming answer. GPT-image style responses fill every field; DALL·E style only the first two."""

    created: int
    data: list[ImageData]
    background: Literal["transparent", "opaque"] | None = None
    output_format: OutputFormat | None = None
    quality: str | None = None
    size: str | None = None
    usage: Usage | None = None
    safety_identifier: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- Streaming (`stream: true`): server-sent events, spec section 4 ---


class _StreamImageEvent(BaseModel):
    """Fields every image stream event carries. `size`, `quality` and `background` echo what the request asked
    for (possibly "auto"), unlike the non-streaming response, which reports resolved values."""

    b64_json: str
    created_at: int
    size: str
    quality: str
    background: Background
    output_format: OutputFormat


class _PartialImageFields(_StreamImageEvent):
    partial_image_index: int


class _CompletedFields(_StreamImageEvent):
    usage: Usage
    safety_identifier: str | None = None


class ImageGenerationPartialImageEvent(_PartialImageFields):
    type: Literal["image_generation.partial_image"] = "image_generation.partial_image"


class ImageGenerationCompletedEvent(_CompletedFields):
    type: Literal["image_generation.completed"] = "image_generation.completed"


class ImageEditPartialImageEvent(_PartialImageFields):
    type: Literal["image_edit.partial_image"] = "image_edit.partial_image"


class ImageEditCompletedEvent(_CompletedFields):
    type: Literal["image_edit.completed"] = "image_edit.completed"


class ErrorEvent(BaseModel):
    """A failure after the stream started; the SDKs raise it as `openai.APIError`."""

    type: Literal["error"] = "error"
    error: ErrorBody
