"""Server-sent events for image streams (spec section 4): one `event:` + `data:` frame per event, keep-alive
comments while a step runs long, and errors after the first byte as an `event: error` frame.

One client gets frames without the `event:` line: openai-python 1.97.0-1.97.1's AsyncStream parses only
`response.*` / `transcript.*` names or none, so `event: image_generation.*` reached `async for` as `type=None`
(its sync Stream and every later SDK accept both). Those versions say who they are in `x-stainless-*` headers.

Errors before the first byte (validation, planning, admission) never get here: routes resolve and submit the job
first, so those are normal HTTP errors. When the client disconnects, Starlette cancels the task iterating these
frames; the cancellation reaches the event source, which cancels its engine job. The response's `on_close` drops
the job however the response ends, also when the frames were never read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from localimg.errors import LocalImgError
from localimg.protocol import ErrorBody, ErrorEvent

if TYPE_CHECKING:
    from localimg.service.streaming import ImageEvent

log = logging.getLogger(__name__)

KEEP_ALIVE_FRAME = b": keep-alive\n\n"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
ASYNC_SDKS_WITHOUT_IMAGE_EVENT_NAMES = frozenset({"1.97.0", "1.97.1"})  # openai-python


def sse_frame(event: ImageEvent | ErrorEvent, *, named: bool = True) -> bytes:
    """`event: <type>` (unless not `named`) and `data: <one-line JSON>`; the name equals the JSON `type`, as the
    SDKs that read it expect."""
    # Optional fields left out of image events; the error object always has all four keys (null included).
    data = event.model_dump_json(exclude_none=not isinstance(event, ErrorEvent))
    name = f"event: {event.type}\n" if named else ""
    return f"{name}data: {data}\n\n".encode()


def names_events_for(headers: Mapping[str, str]) -> bool:
    """False only for the SDK versions whose async stream garbles frames with an image event name."""
    return not (
        headers.get("x-stainless-lang") == "python"
        and headers.get("x-stainless-async", "false").startswith("async")
        and headers.get("x-stainless-package-version") in ASYNC_SDKS_WITHOUT_IMAGE_EVENT_NAMES
    )


def error_event(exc: LocalImgError) -> ErrorEvent:
    return ErrorEvent(error=ErrorBody(message=exc.message, type=exc.type, param=exc.param, code=exc.code))


async def sse_frames(
    events: AsyncGenerator[ImageEvent, None], *, keepalive_s: float, request_id: str | None, named: bool = True
) -> AsyncIterator[bytes]:
    """Frames for `events`, a keep-alive after each `keepalive_s` of silence, and an error frame (then the end)
    if the events fail."""
    next_event: asyncio.Future[ImageEvent] | None = None
    try:
        while True:
            if next_event is None:
                # Kept across keep-alives: cancelling it on a timeout would cancel the job behind it.
                next_event = asyncio.ensure_future(_next(events))
            done, _ = await asyncio.wait({next_event}, timeout=keepalive_s)
            if not done:
                yield KEEP_ALIVE_FRAME
                continue
            finished, next_event = next_event, None
            try:
                event = finished.result()
            except StopAsyncIteration:
                return
            except LocalImgError as exc:
                log.warning("request %s: stream failed: %s", request_id, exc.message)
                yield sse_frame(error_event(exc), named=named)
                return
            except Exception:
                log.exception("request %s: unexpected error in a stream", request_id)
                message = f"The server had an error while processing your request (request id {request_id})."
                yield sse_frame(error_event(LocalImgError(message)), named=named)
                return
            yield sse_frame(event, named=named)
    except (asyncio.CancelledError, GeneratorExit):
        log.info("request %s: client disconnected mid-stream; cancelling its job", request_id)
        raise
    finally:
        if next_event is not None:
            next_event.cancel()
        else:
            await events.aclose()


async def _next(events: AsyncGenerator[ImageEvent, None]) -> ImageEvent:
    return await anext(events)


class EventStreamResponse(StreamingResponse):
    """`text/event-stream` frames; `on_close` runs once the response is over, however it ends."""

    def __init__(self, frames: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(frames, media_type="text/event-stream", headers=SSE_HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def sse_response(
    events: AsyncGenerator[ImageEvent, None],
    *,
    on_close: Callable[[], None],
    keepalive_s: float,
    request_id: str | None,
    named: bool = True,
) -> EventStreamResponse:
    return EventStreamResponse(
        sse_frames(events, keepalive_s=keepalive_s, request_id=request_id, named=named), on_close
    )
