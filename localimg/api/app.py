"""The FastAPI app factory. Every route is served with and without the `/v1` prefix, because SDK users
set `base_url` both ways."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localimg import __version__
from localimg.api import edits, health, images, models
from localimg.api.errors import install_error_handlers
from localimg.config import Settings
from localimg.service.images import ImageService

log = logging.getLogger(__name__)


def create_app(settings: Settings, service: ImageService, preload: list[str]) -> FastAPI:
    """Build the app. `preload` models are loaded on the worker after start-up; /health answers 503 until then."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_preload(app, service, preload))
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.to_thread(service.engine.close)

    app = FastAPI(title="localimg", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.service = service
    app.state.ready = False
    install_error_handlers(app)
    for router in (images.router, edits.router, models.router):
        app.include_router(router, prefix="/v1")
        app.include_router(router, include_in_schema=False)
    app.include_router(health.router)
    app.add_middleware(RequestIdMiddleware)
    return app


async def _preload(app: FastAPI, service: ImageService, names: list[str]) -> None:
    await service.engine.preload(names)
    app.state.ready = True
    log.info("ready: serving %s", ", ".join(service.registry.public_ids()))


class RequestIdMiddleware:
    """Gives every request an id (`x-request-id` on every response, and in the logs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)
