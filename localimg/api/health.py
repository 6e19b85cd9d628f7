"""GET /health: 200 while the process can serve; 503 once its device has failed for good (a sticky CUDA error: the
server is about to exit for its supervisor to restart it). GET /ready: 200 when the preloaded models are loaded
and new work is admitted; 503 while loading, while a preloaded model is unavailable (its load failed: the log
says why), while draining for shutdown, or after a device failure; while a model is unavailable, each probe (at
most one at a time) tries to load it again, within the engine's back-off, so weights put in place are picked up
without a client request. Load balancers and Docker's healthcheck use it. Neither needs an API key."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from localimg.api.state import AppState

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    failure = AppState.of(request.app).service.engine.device_failure
    if failure is not None:
        return JSONResponse({"status": "device_failed", "error": failure}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    state = AppState.of(request.app)
    engine = state.service.engine
    if engine.device_failure is not None:
        return JSONResponse({"status": "device_failed", "error": engine.device_failure}, status_code=503)
    if not engine.accepting:
        return JSONResponse({"status": "draining"}, status_code=503, headers={"retry-after": "1"})
    if not state.ready:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"retry-after": "1"})
    failed = [name for name in state.preloaded if engine.load_error(name) is not None]
    if failed:
        # Probes keep coming while clients are kept away, so they drive the retries: one at a time, each within
        # the engine's back-off (so at most one load attempt per model per back-off period), and never at the
        # cost of the models serving traffic (a model that does not fit next to them stays unavailable).
        if state.reload is None or state.reload.done():
            state.reload = asyncio.create_task(engine.preload(failed, evict=False))
        return JSONResponse({"status": "unavailable", "models": failed}, status_code=503)
    return JSONResponse({"status": "ready", "in_flight": engine.in_flight})
