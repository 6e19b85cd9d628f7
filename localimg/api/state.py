"""What the routes share, as one typed object on `app.state` rather than loose attributes read by name."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.applications import Starlette

from localimg.config import Settings
from localimg.service.images import ImageService


@dataclass
class AppState:
    settings: Settings
    service: ImageService
    preloaded: list[str] = field(default_factory=list)  # the models /ready waits for
    ready: bool = False  # the preloads have been tried (each may have failed: /ready says so)
    reload: asyncio.Task[None] | None = None  # the task retrying failed preloads (api/health.py)

    @staticmethod
    def of(app: Starlette) -> AppState:
        state: AppState = app.state.localimg
        return state
