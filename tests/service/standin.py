"""A Protocol-conforming stand-in backend, only for testing the engine's queueing, batching and cancellation.

Image i of a call is a solid colour derived from its seed, so a test can tell which request got which image.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from PIL import Image

from localimg.backends.base import GenerationPlan, StepCallback, StepProgress
from localimg.errors import GenerationError
from localimg.registry import Registry
from localimg.service.engine import Engine, EngineConfig
from localimg.service.image_store import ImageStore
from localimg.service.images import ImageService


def colour(seed: int) -> tuple[int, int, int]:
    return (seed % 256, (seed // 256) % 256, 7)


@dataclass
class StandInBackend:
    name: str = "m"
    size_bytes: int = 1
    steps: int = 3
    fail_with: Exception | None = None
    load_fails_with: Exception | None = None  # raised by every load while set
    # When set, the first call pauses after its first step until `release` is set (the test acts meanwhile).
    hold: bool = False
    calls: list[list[GenerationPlan]] = field(default_factory=list)
    aborted: list[BaseException] = field(default_factory=list)
    loads: int = 0
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    loaded: bool = False
    journal: list[str] | None = None  # shared by several backends: their calls' order, by backend name

    def __post_init__(self) -> None:
        self.spec = SimpleNamespace(name=self.name, max_batch=64)

    def load(self) -> None:
        self.loads += 1
        if self.load_fails_with is not None:
            raise self.load_fails_with
        self.loaded = True

    def unload(self) -> None:
        self.loaded = False

    def memory_bytes(self) -> int:
        return self.size_bytes if self.loaded else 0

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, batch: Sequence[GenerationPlan], on_step: StepCallback | None = None) -> list[Image.Image]:
        assert self.loaded
        assert len({plan.batch_key for plan in batch}) == 1, "the engine merged incompatible plans"
        self.calls.append(list(batch))
        if self.journal is not None:
            self.journal.append(self.name)
        seeds = [seed for plan in batch for seed in plan.seeds]
        width, height = batch[0].width, batch[0].height
        images = [Image.new("RGB", (width, height), colour(seed)) for seed in seeds]
        try:
            for step in range(1, self.steps + 1):
                if on_step is not None:
                    on_step(StepProgress(step, self.steps, range(len(seeds)), lambda: list(images)))
                if step == 1 and self.hold and len(self.calls) == 1:
                    self.started.set()
                    assert self.release.wait(10), "the test never released the held call"
        except BaseException as exc:
            self.aborted.append(exc)
            raise
        if self.fail_with is not None:
            raise self.fail_with
        return images


def plan(seed: int, *, model: str = "m", n: int = 1, width: int = 8, prompt: str = "a b") -> GenerationPlan:
    return GenerationPlan(
        model=model, prompt=prompt, width=width, height=8, steps=3, guidance_scale=1.0,
        seeds=tuple(range(seed, seed + n)),
    )  # fmt: skip


def one_model_service(backend: StandInBackend | None = None, *, max_queue: int = 64, **options: Any) -> ImageService:
    """The service over one model, `backend` (default: a one-step "m") declared as an SD 1.5 model without weights,
    on an engine that merges no requests. `options` go to ImageService; close `service.engine` when done."""
    backend = backend or StandInBackend(name="m", steps=1)
    registry = Registry.from_dict(
        {"models": {backend.name: {"family": "sd15", "source": {"path": f"/nonexistent/{backend.name}"}}}},
        base_dir=Path("."),
    )
    engine = Engine({backend.name: backend}, config=EngineConfig(batch_window_s=0.0, max_queue=max_queue))
    return ImageService(registry, engine, ImageStore(ttl_s=60), **options)


def asgi_client(app: Any) -> httpx.AsyncClient:
    """An HTTP client that calls `app` in-process. An exception escaping the app (what uvicorn would log as a crash)
    is raised in the test instead of becoming a response."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=True), base_url="http://test")


def http_scope(path: str, content_type: bytes) -> dict[str, Any]:
    """The ASGI scope of a POST from 127.0.0.1, for tests that drive the app with their own receive and send."""
    return {
        "type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
        "headers": [(b"content-type", content_type)], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
        "scheme": "http", "root_path": "", "http_version": "1.1", "asgi": {"version": "3.0"},
    }  # fmt: skip


__all__ = ["GenerationError", "StandInBackend", "asgi_client", "colour", "http_scope", "one_model_service", "plan"]
