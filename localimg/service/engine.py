"""The engine: owns the device and runs generation jobs on it, one worker thread per device.

Torch work runs on the worker thread, never on the event loop; the event loop only awaits futures. The
queue is bounded: a job that would exceed it is refused at once with OverloadedError (HTTP 503 +
Retry-After) rather than waiting unboundedly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from localimg.errors import GenerationCancelled, ModelUnavailableError, OverloadedError

if TYPE_CHECKING:
    from PIL import Image

    from localimg.backends.base import GenerationPlan, ImageBackend, StepCallback, StepProgress

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class GenerationResult:
    images: list[Image.Image]
    prompt_tokens: int
    seconds: float


class Engine:
    """Runs jobs for the models in `backends` on one device, in arrival order."""

    def __init__(self, backends: Mapping[str, ImageBackend], *, max_queue: int = 64) -> None:
        self._backends = dict(backends)
        self._max_queue = max_queue
        self._in_flight = 0  # queued + running; touched only on the event loop
        self._loaded: set[str] = set()
        self._load_errors: dict[str, str] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="localimg-worker")

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def is_loaded(self, model: str) -> bool:
        return model in self._loaded

    def load_error(self, model: str) -> str | None:
        return self._load_errors.get(model)

    async def preload(self, models: list[str]) -> None:
        """Load `models` on the worker, one after another. A model that fails is logged and remembered;
        requests for it get the same clear error later, and the others still load."""
        for name in models:
            try:
                await self._submit(lambda name=name: self._ensure_loaded(name))
            except ModelUnavailableError as exc:
                log.error("model %s is unavailable: %s", name, exc.message)

    async def generate(self, plan: GenerationPlan, on_step: StepCallback | None = None) -> GenerationResult:
        """Run `plan`. If the awaiting task is cancelled (client gone), the job stops at its next step."""
        cancelled = threading.Event()

        def step(progress: StepProgress) -> None:
            if cancelled.is_set():
                raise GenerationCancelled("The request was cancelled.", code="cancelled")
            if on_step is not None:
                on_step(progress)

        try:
            return await self._submit(lambda: self._run(plan, step))
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        for name in list(self._loaded):
            self._backends[name].unload()
        self._loaded.clear()

    async def _submit(self, work: Callable[[], T]) -> T:
        if self._in_flight >= self._max_queue:
            raise OverloadedError(
                f"The server is busy ({self._in_flight} jobs queued or running). Please retry shortly.",
                retry_after=1.0,
            )
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        finally:
            self._in_flight -= 1

    # --- worker thread ---

    def _ensure_loaded(self, name: str) -> ImageBackend:
        backend = self._backends[name]
        if name not in self._loaded:
            started = time.perf_counter()
            try:
                backend.load()
            except ModelUnavailableError as exc:
                self._load_errors[name] = exc.message
                raise
            self._load_errors.pop(name, None)
            self._loaded.add(name)
            log.info("model %s loaded in %.1f s", name, time.perf_counter() - started)
        return backend

    def _run(self, plan: GenerationPlan, step: StepCallback) -> GenerationResult:
        backend = self._ensure_loaded(plan.model)
        started = time.perf_counter()
        # Counted here, on the worker: fast tokenizers are not safe to share across threads.
        tokens = backend.count_tokens(plan.prompt)
        images = backend.generate([plan], step)
        return GenerationResult(images=images, prompt_tokens=tokens, seconds=time.perf_counter() - started)
