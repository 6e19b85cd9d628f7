"""The FastAPI app factory. Every route is served with and without the `/v1` prefix, because SDK users
set `base_url` both ways."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localimg import __version__, request_context
from localimg.api import edits, health, images, metrics, models
from localimg.api.auth import ApiKeyMiddleware
from localimg.api.errors import install_error_handlers, unexpected_error_response
from localimg.api.limits import BodyLimitMiddleware
from localimg.api.state import AppState
from localimg.config import Settings
from localimg.service.engine import Engine
from localimg.service.images import ImageService
from localimg.service.warmup import warm_up_models

log = logging.getLogger(__name__)


def create_app(settings: Settings, service: ImageService, preload: list[str], *, behind_serve: bool = False) -> FastAPI:
    """Build the app. `preload` models are loaded on the worker after start-up: meanwhile /ready answers 503
    and requests are taken (they wait for their model). `behind_serve`: a Ray Serve replica, whose start-up
    itself waits for them (it gets no traffic until its start-up is done) and whose requests come with the id
    Serve's proxy gave them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(preload_and_warm_up(AppState.of(app), preload))
        try:
            if behind_serve:
                await asyncio.shield(loading)
            yield
        finally:
            loading.cancel()
            # The server process ends here: freeing each model's memory one by one only delays its exit (seconds).
            await asyncio.to_thread(service.engine.close, unload=False)

    app = FastAPI(title="localimg", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.localimg = AppState(settings, service)
    install_error_handlers(app)
    for router in (images.router, edits.router, models.router):
        app.include_router(router, prefix="/v1")
        app.include_router(router, include_in_schema=False)
    app.include_router(health.router)
    app.include_router(metrics.router)
    # Added innermost first: the request id wraps everything, CORS answers preflights before the key check, and
    # the key is checked before any body is read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(settings.max_body_mb * 1_000_000))
    if settings.api_key_hashes:
        app.add_middleware(ApiKeyMiddleware, hashes=settings.api_key_hashes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "retry-after", "retry-after-ms"],
        )
    app.add_middleware(ArrivingRequestsMiddleware, engine=service.engine)
    app.add_middleware(RequestIdMiddleware, proxy_ids=behind_serve)
    return app


async def preload_and_warm_up(state: AppState, names: list[str]) -> None:
    """Load (and warm up) the preloaded models, then end the loading state whatever happened: a failed load is
    reported by /ready itself, and anything unexpected here must not leave /ready at "loading" forever."""
    service = state.service
    state.preloaded = names
    sizes = state.settings.warmup_sizes
    if sizes and not names:
        log.warning("--warmup has no effect: it warms up the preloaded models, and --preload names none")
    try:
        await service.engine.preload(names)
        if sizes:
            await warm_up_models(
                service.engine, service.registry, [n for n in names if service.engine.is_loaded(n)], sizes
            )
    except Exception:
        log.exception("preloading failed")
    else:
        failed = [name for name in names if service.engine.load_error(name) is not None]
        if failed:
            log.warning(
                "started, but not ready: %s could not be loaded (see above); /ready answers 503", ", ".join(failed)
            )
        else:
            log.info("ready: serving %s", ", ".join(service.registry.public_ids()))
    state.ready = True


class ArrivingRequestsMiddleware:
    """Holds `engine.request_arriving()` around every image POST from its first byte, before its body is read,
    so the worker knows whether a job it takes alone may get company within the batch window."""

    def __init__(self, app: ASGIApp, engine: Engine) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and scope["method"] == "POST" and path.startswith(("/v1/images/", "/images/")):
            with self.engine.request_arriving():
                await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)


# Polled by load balancers, orchestrators and Prometheus every few seconds: logged at INFO only when their status
# changes (the server turning ready or not), at DEBUG otherwise, so that the log keeps the requests.
PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})


class RequestIdMiddleware:
    """Gives every request an id (`x-request-id` on every response, and in the logs), sets the request context
    (request id; client = remote address, until an API key names it) and logs one line per request, naming the
    error when it failed.

    With `proxy_ids` (behind Ray Serve's proxy) the id is the one the proxy put on the request, and the proxy adds
    it to the response: one id in the header, the proxy's log and this server's log, not two unrelated ones."""

    def __init__(self, app: ASGIApp, *, proxy_ids: bool = False) -> None:
        self.app = app
        self._proxy_ids = proxy_ids
        self._probe_status: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        proxy_id = Headers(scope=scope).get("x-request-id") if self._proxy_ids else None
        request_id = loggable(proxy_id[:_MAX_ID_LENGTH]) if proxy_id else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        request_context.request_id.set(request_id)
        client = scope.get("client")
        request_context.client_id.set(f"addr:{client[0]}" if client else "anonymous")
        started = time.perf_counter()
        status = 0
        error_code: str | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, error_code
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = headers if proxy_id else [*headers, (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body" and status >= 400 and error_code is None:
                error_code = _error_code(message.get("body", b""))
            await send(message)

        async def receive_or_disconnect() -> Message:
            try:
                return await receive()
            except Exception as exc:  # the connection was lost under the server (Serve's proxy ended mid-stream)
                log.info("connection lost (%s); handled as a client disconnect", type(exc).__name__)
                return {"type": "http.disconnect"}

        try:
            await self.app(scope, receive_or_disconnect, send_with_id)
        except ClientDisconnect:  # gone while its body was being read: nobody to answer, nothing went wrong here
            status = 499
        except Exception:
            # Answered and logged here, once, with its status; Starlette's fallback would log it again, and
            # uvicorn a third time, while this line said status=0.
            log.exception("%s %s: unexpected error", scope["method"], loggable(scope["path"]))
            if status:  # the response has started: nothing more can be sent
                raise
            status = 500
            await unexpected_error_response(request_id)(scope, receive, send_with_id)
        finally:
            path = scope["path"]
            level = logging.INFO
            if path in PROBE_PATHS:
                level = logging.DEBUG if self._probe_status.get(path) == status else logging.INFO
                self._probe_status[path] = status
            log.log(
                level, "%s %s status=%d%s ms=%.0f client=%s",
                scope["method"], loggable(path), status, f" error={error_code}" if error_code else "",
                1000 * (time.perf_counter() - started), request_context.client_id.get(),
            )  # fmt: skip


# A client may choose the id Serve's proxy uses (its own x-request-id): it goes into log lines, so it is bounded.
_MAX_ID_LENGTH = 128


def _error_code(body: bytes) -> str | None:
    """The `code` (else the `type`) of an OpenAI error envelope; error responses are one small JSON body."""
    try:
        error = json.loads(body)["error"]
        code = error.get("code") or error.get("type")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return loggable(code) if isinstance(code, str) else None


def loggable(path: str) -> str:
    """A decoded URL path fit for one log line: a client's %0A or %00 must not forge or break lines."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in path)
