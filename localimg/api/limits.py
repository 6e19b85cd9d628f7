"""The request body limit: bodies over `max_bytes` get 413 in OpenAI's envelope before the app parses them.

A declared Content-Length over the limit is refused without reading the body; otherwise the body is read in
chunks and counted, and refused as soon as the count passes the limit, so no request can make the server hold
more than `max_bytes` of it (chunked uploads included).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localimg.api.errors import error_response
from localimg.errors import PayloadTooLargeError


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit_mb = self.max_bytes / 1_000_000
        error = PayloadTooLargeError(
            f"The request body is larger than this server's limit of {limit_mb:g} MB.", code="request_too_large"
        )
        request_id = scope.get("state", {}).get("request_id")
        await error_response(error, request_id, headers={"connection": "close"})(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    try:
        return int(Headers(scope=scope)["content-length"])
    except (KeyError, ValueError):
        return None
