"""Routes for image inputs: `POST /images/edits` and `POST /images/variations`.

Edits arrive as multipart (what both SDKs send: `image` or repeated `image[]` parts, `mask`, text fields whose
numbers and booleans are strings) or as JSON (`images: [{image_url: "data:..."}]`, REST only). Both become the
same `ImageEditRequest` plus the uploaded bytes; files are identified by their magic bytes later, not by the
declared content type, since the SDK sends raw bytes as `application/octet-stream`.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from localimg.api.disconnect import cancel_on_disconnect
from localimg.api.errors import openai_validation_error
from localimg.api.images import files_url, service_of, sse
from localimg.errors import InvalidRequestError
from localimg.protocol import ErrorResponse, ImageEditRequest, ImagesResponse, ImageVariationRequest
from localimg.registry import MAX_INPUT_IMAGES
from localimg.service.images import Upload

router = APIRouter(tags=["images"], responses={400: {"model": ErrorResponse}, 500: {"model": ErrorResponse}})

M = TypeVar("M", bound=BaseModel)
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w=.+-]+)*;base64,(?P<data>.*)$", re.DOTALL)
_EDIT_FILES = {"image", "image[]", "mask"}
# Above OpenAI's 16 images + a mask, so that a few too many get our clear 400; far above, the parser refuses.
_MAX_FILE_PARTS = 64
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


@router.post("/images/edits", response_model=ImagesResponse, response_model_exclude_none=True)
async def create_image_edit(request: Request) -> ImagesResponse | StreamingResponse:
    if _is_json(request):
        body, images, mask = _edit_from_json(await _json_object(request))
    else:
        body, images, mask = await _edit_from_form(await _form(request, max_files=_MAX_FILE_PARTS))
    service = service_of(request)
    if body.stream:
        job = await service.plan_edit(body, images, mask)  # before the first byte: a bad request is a plain 400
        return sse(service.stream(job, "image_edit"), request)
    return await cancel_on_disconnect(request, service.edit(body, images, mask, url_base=files_url(request)))


@router.post("/images/variations", response_model=ImagesResponse, response_model_exclude_none=True)
async def create_image_variation(request: Request) -> ImagesResponse:
    if _is_json(request):
        raise InvalidRequestError(
            "/images/variations takes multipart/form-data with an 'image' file.", code="invalid_content_type"
        )
    form = await _form(request, max_files=_MAX_FILE_PARTS)
    # An SDK given a list sends `image[]` parts: one is the image, more get the count in the error.
    fields, files = await _split(form, allowed_files={"image", "image[]"}, request_model=ImageVariationRequest)
    images = files.get("image", []) + files.get("image[]", [])
    if not images:
        raise _missing("image")
    if len(images) > 1:
        raise InvalidRequestError(
            f"Variations take exactly one 'image' file; got {len(images)}.", param="image", code="too_many_images"
        )
    body = _validated(ImageVariationRequest, fields, strict=False)
    variation = service_of(request).variation(body, images[0], url_base=files_url(request))
    return await cancel_on_disconnect(request, variation)


async def _edit_from_form(form: FormData) -> tuple[ImageEditRequest, list[Upload], Upload | None]:
    if isinstance(form.get("images"), UploadFile):
        raise InvalidRequestError(
            "For multipart/form-data use 'image' or 'image[]' for the image files, not 'images'.",
            param="images",
            code="unknown_parameter",
        )
    fields, files = await _split(form, allowed_files=_EDIT_FILES, request_model=ImageEditRequest)
    single, array = files.get("image", []), files.get("image[]", [])
    parts = [*single, *array]
    if not parts:
        raise _missing("image")
    # One `image` part is "image"; a list (even of one) is "image[i]", as OpenAI names them in errors.
    images = (
        parts if len(single) == 1 and not array else [Upload(f"image[{i}]", part.data) for i, part in enumerate(parts)]
    )
    masks = files.get("mask", [])
    if len(masks) > 1:
        raise InvalidRequestError("Only one 'mask' file may be sent.", param="mask", code="invalid_value")
    return _validated(ImageEditRequest, fields, strict=False), images, (masks[0] if masks else None)


def _edit_from_json(body: dict[str, Any]) -> tuple[ImageEditRequest, list[Upload], Upload | None]:
    for key in ("image", "image[]"):
        if key in body:
            raise InvalidRequestError(
                f"Unknown parameter: '{key}'. In a JSON body, send the images as 'images' (an array of "
                '{"image_url": ...} objects).',
                param=key,
                code="unknown_parameter",
            )
    refs = body.pop("images", None)
    mask_ref = body.pop("mask", None)
    if refs is None:
        raise _missing("images")
    if not isinstance(refs, list) or not refs:
        raise InvalidRequestError(
            "Invalid 'images': expected a non-empty array of image references.", param="images", code="invalid_type"
        )
    if len(refs) > MAX_INPUT_IMAGES:
        raise InvalidRequestError(
            f"Too many images: got {len(refs)}, at most {MAX_INPUT_IMAGES} are allowed.",
            param="images",
            code="too_many_images",
        )
    images = [Upload(f"images[{i}]", _referenced_bytes(ref, f"images[{i}]")) for i, ref in enumerate(refs)]
    mask = None if mask_ref is None else Upload("mask", _referenced_bytes(mask_ref, "mask"))
    return _validated(ImageEditRequest, body, strict=True), images, mask


def _referenced_bytes(ref: Any, param: str) -> bytes:
    """The bytes of an `{image_url: "data:..."}` reference. This server fetches nothing from the network."""
    if not isinstance(ref, dict) or len(ref) != 1 or not ({"image_url", "file_id"} & ref.keys()):
        raise InvalidRequestError(
            f"Invalid '{param}': expected an object with exactly one of 'image_url' or 'file_id'.",
            param=param,
            code="invalid_value",
        )
    if "file_id" in ref:
        raise InvalidRequestError(
            f"Invalid '{param}': file_id references are not supported by this server; send the image inline as "
            "an image_url data URL, or as a multipart upload.",
            param=param,
            code="invalid_value",
        )
    url = ref["image_url"]
    match = _DATA_URL.match(url) if isinstance(url, str) else None
    if match is None:
        raise InvalidRequestError(
            f"Invalid '{param}': expected a base64 data URL (data:image/png;base64,...). This server runs offline "
            "and does not fetch images from URLs.",
            param=param,
            code="invalid_image_url",
        )
    try:
        # Line-wrapped base64 (MIME encoders, Python's encodebytes) is still base64.
        return base64.b64decode(re.sub(r"\s+", "", match["data"]), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(
            f"Invalid '{param}': the data URL is not valid base64.", param=param, code="invalid_image_url"
        ) from None


async def _split(
    form: FormData, *, allowed_files: set[str], request_model: type[BaseModel]
) -> tuple[dict[str, str], dict[str, list[Upload]]]:
    """Text fields (the last value of a repeated key wins) and file parts by name, in order."""
    fields: dict[str, str] = {}
    files: dict[str, list[Upload]] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in request_model.model_fields and key not in allowed_files:
                # e.g. gpt-image-2.5's `markup` overlay, which no local model can follow
                raise InvalidRequestError(f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")
            if key not in allowed_files:
                raise InvalidRequestError(
                    f"Invalid type for '{key}': expected a text value, but got a file.", param=key, code="invalid_type"
                )
            files.setdefault(key, []).append(Upload(key, await value.read()))  # off the loop if spooled to disk
        elif key in allowed_files:
            raise InvalidRequestError(
                f"Invalid type for '{key}': expected a file, but got a text value.", param=key, code="invalid_type"
            )
        else:
            fields[key] = value
    return fields, files


def _validated(model: type[M], data: dict[str, Any], *, strict: bool) -> M:
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise openai_validation_error(exc.errors(), data) from None


async def _form(request: Request, *, max_files: int) -> FormData:
    # A urlencoded form cannot carry files, but parsing it lets the error name the missing file.
    if not request.headers.get("content-type", "").startswith(_FORM_TYPES):
        raise InvalidRequestError(
            "Expected a multipart/form-data body (as the OpenAI SDKs send) or application/json.",
            code="invalid_content_type",
        )
    try:
        return await request.form(max_files=max_files, max_fields=100)
    except HTTPException as exc:  # Starlette's multipart parser: a malformed body, or too many parts
        raise InvalidRequestError(f"Invalid multipart/form-data body: {exc.detail}", code="invalid_multipart") from None


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. The API expects a JSON object.", code="invalid_json"
        )
    return body


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip() == "application/json"


def _missing(param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )
