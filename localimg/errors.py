"""Domain errors. Raised anywhere below the HTTP layer, translated to the OpenAI envelope once, in api/errors.py.

Each class fixes the HTTP status and OpenAI error `type`; an instance carries the message, the offending
`param` and a string `code`, exactly the four keys of OpenAI's error object.
"""

from __future__ import annotations


def quoted_list(values: list[str] | tuple[str, ...]) -> str:
    """OpenAI's way of listing supported values: `'low', 'medium', 'high', and 'auto'`."""
    quoted = [f"'{value}'" for value in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return f"{', '.join(quoted[:-1])}, and {quoted[-1]}"


class LocalImgError(Exception):
    status: int = 500
    type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequestError(LocalImgError):
    """The request is wrong and retrying it unchanged cannot succeed (HTTP 400)."""

    status = 400
    type = "invalid_request_error"


class ImageGenerationUserError(InvalidRequestError):
    """A 400 the live Images API types as the image model's own refusal: an unknown model, a size the free-form
    GPT sizes do not allow."""

    type = "image_generation_user_error"


class NotFoundError(LocalImgError):
    status = 404
    type = "invalid_request_error"


class AuthenticationError(LocalImgError):
    status = 401
    type = "invalid_request_error"


class PayloadTooLargeError(LocalImgError):
    status = 413
    type = "invalid_request_error"


class OverloadedError(LocalImgError):
    """The server cannot take the job now (it is shutting down); retry after `retry_after` seconds, elsewhere if
    a load balancer can."""

    status = 503
    type = "server_error"

    def __init__(self, message: str, *, retry_after: float = 1.0, code: str | None = "server_shutting_down") -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ServerBusyError(OverloadedError):
    """The queue is full. 429 `rate_limit_exceeded` as OpenAI answers a burst, so the SDKs wait `retry_after`,
    retry, and raise `RateLimitError` when their retries run out (spec checklist 31)."""

    status = 429
    type = "requests"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after, code="rate_limit_exceeded")


class RequestTimeoutError(LocalImgError):
    """The job did not finish within the server's request timeout; it is cancelled at its next step.

    504 like a gateway timeout: the server, not the client, was too slow. Not retried by the SDKs (the service
    sends `x-should-retry: false`): re-sending the same heavy job to a server that is already too slow only
    makes the queue longer.
    """

    status = 504
    type = "server_error"


class HTTPStatusError(LocalImgError):
    """A protocol-level failure (unknown route, wrong method) with the status the HTTP layer chose."""

    type = "invalid_request_error"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# The code of an error caused by the device's memory running out: a GenerationError (one call was too large), or
# a ModelUnavailableError (the model did not fit: the one load failure that freeing other models can cure).
OUT_OF_MEMORY = "out_of_memory"


class ModelUnavailableError(LocalImgError):
    """The model is declared but cannot be served (weights missing, failed to load)."""

    status = 503
    type = "server_error"


class GenerationCancelled(LocalImgError):
    """The job was cancelled (client gone, timeout); nobody is waiting for an answer."""

    status = 499
    type = "cancelled"


class GenerationError(LocalImgError):
    """The backend failed while generating; the message is safe to show to a client."""

    status = 500
    type = "server_error"


class DeviceFailedError(LocalImgError):
    """The device failed in a way no later call on it can recover from (a sticky CUDA error: illegal memory
    access, device-side assert, uncorrectable ECC error, ...): the process must be restarted to generate again."""

    status = 503
    type = "server_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="device_failed")


class RegistryError(Exception):
    """models.toml is malformed. The message names the file, the table and the key."""
