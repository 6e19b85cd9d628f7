"""The only place errors become HTTP responses: OpenAI's envelope `{"error": {message, type, param, code}}`.

Validation failures are 400 with OpenAI's codes (never FastAPI's 422 `detail`); unexpected exceptions are a
500 with a fixed message and the request id, and the traceback goes to the log, not to the client.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from localimg.errors import (
    DeviceFailedError,
    HTTPStatusError,
    InvalidRequestError,
    LocalImgError,
    ModelUnavailableError,
    OverloadedError,
    RequestTimeoutError,
    quoted_list,
)
from localimg.protocol import ErrorBody, ErrorResponse
from localimg.service.planning import api_style, check_prompt

log = logging.getLogger(__name__)

_INVALID_JSON = (
    "We could not parse the JSON body of your request. The API expects a JSON object as the body of a "
    "POST request with Content-Type: application/json."
)
_FASTAPI_BODY_ERROR = "There was an error parsing the body"  # what FastAPI raises for a body json.loads refuses
_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "string_type": "a string",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "float_type": "a number",
    "float_parsing": "a number",
}


def error_response(
    exc: LocalImgError, request_id: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=exc.message, type=exc.type, param=exc.param, code=exc.code))
    all_headers = dict(headers or {})
    if isinstance(exc, OverloadedError):
        # Both spellings: the OpenAI SDKs read retry-after-ms first, other clients Retry-After.
        all_headers["retry-after"] = str(max(1, round(exc.retry_after)))
        all_headers["retry-after-ms"] = str(int(exc.retry_after * 1000))
    if isinstance(exc, (ModelUnavailableError, RequestTimeoutError, DeviceFailedError)):
        # Missing weights do not appear within an SDK retry window; a timed-out job re-sent only lengthens the
        # queue; a failed device is this process's end (a retry would find the port closed, and the SDK would
        # report a connection error instead of this one).
        all_headers["x-should-retry"] = "false"
    if request_id:
        all_headers["x-request-id"] = request_id
    return JSONResponse(body.model_dump(), status_code=exc.status, headers=all_headers)


def openai_validation_error(errors: Sequence[Mapping[str, Any]], body: object = None) -> InvalidRequestError:
    """Translate pydantic errors into the one error OpenAI would report: unknown keys first, then
    the prompt, then `n`, then the rest (the live API's validation order). `body`, the fields as sent, lets a
    prompt too long for its model (a limit pydantic does not know) come before `n` and the enums too."""

    def rank(error: Mapping[str, Any]) -> tuple[int, int]:
        field = _field(error)
        if error["type"] == "extra_forbidden":
            return (0, 0)
        if error["type"] == "missing":
            return (1, 0)
        return (2, {"prompt": 0, "image": 1, "n": 2}.get(field or "", 3))

    error = min(errors, key=rank)
    if rank(error) > (2, 0):
        too_long = _prompt_too_long(body)
        if too_long is not None:
            return too_long
    return _translate(error)


def _prompt_too_long(body: object) -> InvalidRequestError | None:
    if not isinstance(body, Mapping):
        return None
    prompt, model = body.get("prompt"), body.get("model")
    if not isinstance(prompt, str) or not isinstance(model, (str, type(None))):
        return None
    try:
        check_prompt(prompt, api_style(model or ""))
    except InvalidRequestError as exc:
        return exc
    return None


def _translate(error: Mapping[str, Any]) -> InvalidRequestError:
    kind = error["type"]
    field = _field(error)
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "json_invalid":  # its loc is the body's character offset, not a parameter
        return InvalidRequestError(_INVALID_JSON, code="invalid_json")
    if field is None:
        if kind == "missing":
            return InvalidRequestError(
                "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter"
            )
        return InvalidRequestError(_INVALID_JSON, code="invalid_json")
    if kind == "extra_forbidden":
        return InvalidRequestError(f"Unknown parameter: '{field}'.", param=field, code="unknown_parameter")
    if kind == "missing":
        return InvalidRequestError(
            f"Missing required parameter: '{field}'.", param=field, code="missing_required_parameter"
        )
    if kind in _EXPECTED:
        return InvalidRequestError(
            f"Invalid type for '{field}': expected {_EXPECTED[kind]}, but got {_json_type(value)} instead.",
            param=field,
            code="invalid_type",
        )
    if kind == "literal_error":
        # pydantic lists them as "'png', 'jpeg' or 'webp'"; OpenAI as "'png', 'jpeg', and 'webp'".
        supported = quoted_list(re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
        return InvalidRequestError(
            f"Invalid value: '{value}'. Supported values are: {supported}.", param=field, code="invalid_value"
        )
    if kind == "string_unicode":  # the value itself is not quoted: it cannot be written as UTF-8
        return InvalidRequestError(
            f"Invalid '{field}': the string is not valid Unicode (it holds an unpaired UTF-16 surrogate).",
            param=field,
            code="invalid_value",
        )
    if kind == "string_too_short":
        return InvalidRequestError(
            f"Invalid '{field}': empty string. Expected a string with minimum length 1, "
            "but got an empty string instead.",
            param=field,
            code="empty_string",
        )
    if kind == "string_too_long":
        limit = ctx.get("max_length")
        return InvalidRequestError(
            f"Invalid '{field}': string too long. Expected a string with maximum length {limit}, "
            f"but got a string with length {len(value)} instead.",
            param=field,
            code="string_above_max_length",
        )
    if kind in ("less_than_equal", "less_than", "greater_than_equal", "greater_than"):
        above = kind.startswith("less")
        bound = next(iter(ctx.values()), None)
        # A float field's bounds are floats (protocol.py), whatever text the client sent.
        number = "integer" if _is_integer(value) and not isinstance(bound, float) else "decimal"
        direction = "above maximum" if above else "below minimum"
        relation = {"less_than_equal": "<=", "less_than": "<", "greater_than_equal": ">=", "greater_than": ">"}[kind]
        return InvalidRequestError(
            f"Invalid '{field}': {number} {direction} value. Expected a value {relation} {bound}, "
            f"but got {value} instead.",
            param=field,
            code=f"{number}_{'above_max' if above else 'below_min'}_value",
        )
    message = f"Invalid value for '{field}': {error.get('msg', 'invalid')}."
    return InvalidRequestError(message, param=field, code="invalid_value")


def _field(error: Mapping[str, Any]) -> str | None:
    loc = [part for part in error.get("loc", ()) if part != "body"]
    return ".".join(str(part) for part in loc) or None


def _is_integer(value: Any) -> bool:
    # Multipart forms carry numbers as text: "11" is the integer a client meant.
    if isinstance(value, str):
        return value.strip().lstrip("+-").isdigit()
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LocalImgError)
    async def _domain(request: Request, exc: LocalImgError) -> JSONResponse:
        if exc.status == 500:
            log.error("request %s failed: %s", request_id_of(request), exc.message)
        elif exc.status > 500:  # refused while draining, out of time: expected under load, not a fault
            log.warning("request %s failed: %s", request_id_of(request), exc.message)
        return error_response(exc, request_id_of(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(openai_validation_error(exc.errors(), exc.body), request_id_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err: LocalImgError
        if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_ERROR:  # e.g. a body that is not UTF-8
            err = InvalidRequestError(_INVALID_JSON, code="invalid_json")
        else:
            message = (
                f"Invalid URL ({request.method} {request.url.path})" if exc.status_code == 404 else str(exc.detail)
            )
            err = HTTPStatusError(exc.status_code, message)
        return error_response(err, request_id_of(request), headers=exc.headers)


def unexpected_error_response(request_id: str) -> JSONResponse:
    """The 500 for an exception nothing else handled (api/app.py's RequestIdMiddleware sends it and logs it)."""
    err = LocalImgError(f"The server had an error while processing your request (request id {request_id}).")
    return error_response(err, request_id, headers={"x-should-retry": "false"})
