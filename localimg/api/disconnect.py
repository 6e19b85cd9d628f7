"""Cancel a request's work when its client goes away.

Starlette does not cancel a handler whose client disconnects, so a non-streaming generation would run to the end
for nobody. Once the body has been read, the next ASGI `receive()` returns only when the client disconnects:
racing it against the work lets us cancel the work, and the engine stops the job at its next denoising step.
(Streaming responses need none of this: Starlette cancels them on disconnect.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from localimg.api.errors import request_id_of
from localimg.errors import GenerationCancelled

log = logging.getLogger(__name__)
T = TypeVar("T")


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`; if the client disconnects first, cancel it and raise GenerationCancelled."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        log.info("request %s: client disconnected; cancelling its job", request_id_of(request))
        raise GenerationCancelled("The client disconnected before the images were ready.", code="client_disconnected")
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
