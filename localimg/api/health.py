"""GET /health: the process serves (always 200). GET /ready: 200 when the preloaded models are loaded and new
work is admitted; 503 while loading, while a preloaded model is unavailable (its load failed: the log says why),
or while draining for shutdown. Load balancers and Docker's healthcheck use it. Neither needs an API key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    engine = request.app.state.service.engine
    if not engine.accepting:
        return JSONResponse({"status": "draining"}, status_code=503, headers={"retry-after": "1"})
    if not request.app.state.ready:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"retry-after": "1"})
    # A model that failed to load may load later (the weights put in place): ask the engine each time.
    failed = [name for name in request.app.state.preloaded if engine.load_error(name) is not None]
    if failed:
        return JSONResponse({"status": "unavailable", "models": failed}, status_code=503)
    return JSONResponse({"status": "ready", "in_flight": engine.in_flight})
