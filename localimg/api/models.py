"""GET /models and /models/{id}: every model name and alias that can be served (its weights are on disk), so
model pickers show them."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from localimg.api.state import AppState
from localimg.errors import NotFoundError
from localimg.protocol import ErrorResponse, ModelCard, ModelList

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return await asyncio.to_thread(AppState.of(request.app).service.list_models)


@router.get("/models/{model_id}", response_model=ModelCard, responses={404: {"model": ErrorResponse}})
async def retrieve_model(model_id: str, request: Request) -> ModelCard:
    card: ModelCard | None = await asyncio.to_thread(AppState.of(request.app).service.get_model, model_id)
    if card is None:
        raise NotFoundError(
            f"The model '{model_id}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return card
