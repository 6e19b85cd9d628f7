"""GET /metrics: the engine's Prometheus metrics (text exposition format), from its own registry."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from localimg.api.state import AppState

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    registry = AppState.of(request.app).service.engine.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
