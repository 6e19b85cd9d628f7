"""The engine: owns the device and runs generation jobs on it, from one worker thread per device.

Torch work runs on the worker thread, never on the event loop; the event loop only admits jobs and awaits their
futures. Admission is bounded: past `max_queue` jobs queued or running a job is refused at once with
ServerBusyError (HTTP 429), and while draining for shutdown with OverloadedError (HTTP 503), both with
Retry-After. The worker takes jobs from a `FairQueue`, merges compatible ones into one backend call (see
scheduler.py for the batch key and fairness), and keeps the resident models within the memory budget
(residency.py).

Every admitted job ends in a result or an error its waiter receives: a failed batch fails each job in it, a
timed-out job gets RequestTimeoutError, and shutdown fails whatever is left with OverloadedError. A device that
fails for good (DeviceFailedError, found by a batch or reported with `report_device_failure`) fails the queued
jobs too and every later one, and is reported by `device_failure` so that the process gets restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from localimg import request_context
from localimg.errors import (
    OUT_OF_MEMORY,
    DeviceFailedError,
    GenerationCancelled,
    LocalImgError,
    ModelUnavailableError,
    OverloadedError,
    RequestTimeoutError,
    ServerBusyError,
)
from localimg.service.metrics import EngineMetrics
from localimg.service.residency import ModelResidency
from localimg.service.scheduler import BatchProgress, FairQueue, GenerationResult, Job

if TYPE_CHECKING:
    from localimg.backends.base import GenerationPlan, ImageBackend, StepCallback

__all__ = ["Engine", "EngineConfig", "GenerationResult"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    max_queue: int = 64  # jobs queued or running before new ones are refused
    max_batch: int = 8  # images per merged backend call
    batch_window_s: float = 0.01  # how long the worker waits for compatible jobs; 0: no merging at all
    request_timeout_s: float | None = None  # per job, from admission; None: no limit
    memory_budget_bytes: int | None = None  # resident models' weights; None: no limit
    retry_after_s: float = 1.0  # suggested to refused clients
    swap_patience_s: float = 30.0  # how long a job may wait while others run on the loaded models (scheduler.py)


class Engine:
    """Runs jobs for the models in `backends` on one device."""

    def __init__(
        self,
        backends: Mapping[str, ImageBackend],
        *,
        config: EngineConfig | None = None,
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.config = config if config is not None else EngineConfig()
        self.metrics = metrics if metrics is not None else EngineMetrics()
        self._residency = ModelResidency(backends, self.config.memory_budget_bytes, self.metrics)
        self._in_flight = 0  # admitted and not yet answered; touched only on the event loop
        self._arriving = 0  # requests the HTTP layer holds, admitted or not (see `request_arriving`)
        self._accepting = True
        self._cond = threading.Condition()
        self._queue = FairQueue()  # guarded by _cond, like _control, _running and _closed
        self._control: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._running: list[Job] = []
        self._closed = False
        self._device_failure: DeviceFailedError | None = None  # written once, under _cond
        self._worker = threading.Thread(target=self._work, name="localimg-worker", daemon=True)
        self._worker.start()

    # --- event loop side ---

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def accepting(self) -> bool:
        """Whether new jobs are admitted (False once draining for shutdown)."""
        return self._accepting

    @property
    def device_failure(self) -> str | None:
        """Why the device cannot be used any more (this process must be restarted), or None while it can."""
        return None if self._device_failure is None else self._device_failure.message

    @contextmanager
    def request_arriving(self) -> Iterator[None]:
        """Held by the HTTP layer around each image request, from its first byte to its last. It tells the
        worker that company may be on its way before the request's job is admitted (bodies are still being
        read and planned), so a lone job waits the batch window only when merging is possible."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    def is_loaded(self, model: str) -> bool:
        return self._residency.is_loaded(model)

    def load_error(self, model: str) -> str | None:
        return self._residency.load_error(model)

    async def preload(self, models: list[str], *, evict: bool = True) -> None:
        """Load `models` on the worker, one after another. A model that fails is logged and remembered
        (`load_error`); requests for it get a clear error, and the others still load. Without `evict`, a model
        that runs out of memory next to the resident ones fails rather than unloading them: a retry no client
        asked for must not take away the models serving traffic."""
        for name in models:
            with contextlib.suppress(ModelUnavailableError):
                await asyncio.wrap_future(
                    self._on_worker(lambda name=name: self._residency.acquire(name, evict_on_oom=evict))
                )

    async def generate(
        self,
        plan: GenerationPlan,
        on_step: StepCallback | None = None,
        *,
        client: str | None = None,
        usage_prompt: str | None = None,
    ) -> GenerationResult:
        """Run `plan` and return its result: `submit` and await the task."""
        return await self.submit(plan, on_step, client=client, usage_prompt=usage_prompt)

    def submit(
        self,
        plan: GenerationPlan,
        on_step: StepCallback | None = None,
        *,
        client: str | None = None,
        usage_prompt: str | None = None,
    ) -> asyncio.Task[GenerationResult]:
        """Admit `plan` for `client` (default: the current request's client, see request_context) now, in one
        step with the admission check (raising what `check_admission` raises), and return the task that awaits
        its result. A stream submits before its first byte, so that a refusal is a plain HTTP error.

        The result's `prompt_tokens` counts `usage_prompt` (default: the plan's prompt): the client's own words
        when the service added some of its own. Cancelling the task (client gone) drops the job, and its backend
        call stops at the next step once no other job shares it. Past the request timeout the task raises
        RequestTimeoutError."""
        self.check_admission()
        job = Job(
            plan,
            client if client is not None else request_context.client_id.get(),
            on_step,
            request_id=request_context.request_id.get(),
            usage_prompt=plan.prompt if usage_prompt is None else usage_prompt,
        )
        self._in_flight += 1
        with self._cond:
            self._queue.push(job)
            self.metrics.waiting.set(len(self._queue))
            self._cond.notify_all()
        task = asyncio.ensure_future(self._result_of(job))
        # A callback, not a `finally` in the task: a task cancelled before its first step never runs its body.
        task.add_done_callback(lambda done: self._answered(job, done))
        return task

    async def _result_of(self, job: Job) -> GenerationResult:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), self.config.request_timeout_s)
        except asyncio.TimeoutError:
            self._cancel(job, "timeout")
            raise RequestTimeoutError(
                f"The request did not finish within the server's timeout of {self.config.request_timeout_s:g} "
                "seconds and was cancelled. Try fewer images, a smaller size or a lower quality.",
                code="request_timeout",
            ) from None

    def _answered(self, job: Job, task: asyncio.Task[GenerationResult]) -> None:
        self._in_flight -= 1
        if task.cancelled():
            self._cancel(job, "client")

    def stop_admission(self) -> None:
        """Refuse new jobs from now on (503); queued and running ones go on. The first step of a shutdown."""
        if self._accepting:
            log.info("admission stopped: draining %d job(s)", self._in_flight)
        self._accepting = False

    def abort(self, reason: str = "The server is shutting down.") -> None:
        """Fail every queued and running job with a 503 now (their waiters get the error)."""
        error = OverloadedError(f"{reason} Please retry.")
        with self._cond:
            jobs = self._queue.drain() + list(self._running)
            self.metrics.waiting.set(0)
        for job in jobs:
            if job.settle(error=error):
                self.metrics.cancelled.labels(job.plan.model, "shutdown").inc()
            job.cancelled.set()

    def close(self, *, unload: bool = True) -> None:
        """Stop admission, fail what is left, stop the worker and (unless `unload` is false: the process is
        exiting, and its memory goes with it) unload every model. Blocks until done."""
        self.stop_admission()
        self.abort()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join()
        if unload:
            self._residency.unload_all()

    def check_admission(self) -> None:
        """Raise what `submit` would refuse a job with now: 503 while shutting down, 429 while the queue is
        full. Uploads call it before decoding."""
        if self._device_failure is not None:
            self.metrics.rejected.labels("device_failed").inc()
            raise DeviceFailedError(self._device_failure.message)
        if not self._accepting:
            self.metrics.rejected.labels("shutting_down").inc()
            raise OverloadedError(
                "The server is shutting down and accepts no new requests. Please retry.",
                retry_after=self.config.retry_after_s,
            )
        if self._in_flight >= self.config.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            raise ServerBusyError(
                f"The server is busy ({self._in_flight} jobs queued or running). Please retry shortly.",
                retry_after=self.config.retry_after_s,
            )

    def _cancel(self, job: Job, reason: str) -> None:
        job.cancelled.set()
        with self._cond:
            self._queue.discard(job)
            self.metrics.waiting.set(len(self._queue))
        self.metrics.cancelled.labels(job.plan.model, reason).inc()
        log.info("job cancelled (%s)", reason, extra={"request_id": job.request_id})

    def _on_worker(self, work: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._cond:
            if self._closed:
                future.set_exception(OverloadedError("The server is shutting down."))
                return future
            self._control.append((work, future))
            self._cond.notify_all()
        return future

    # --- worker thread ---

    def _work(self) -> None:
        while True:
            control = None
            batch: list[Job] = []
            with self._cond:
                while not (self._closed or self._control or len(self._queue)):
                    self._cond.wait()
                if self._control:
                    control = self._control.popleft()
                elif self._closed:
                    return
                else:
                    batch = self._collect_batch()
                    self.metrics.waiting.set(len(self._queue))
            if control is not None:
                work, future = control
                if not future.set_running_or_notify_cancel():
                    continue  # its waiter is gone (a preload cancelled at shutdown)
                try:
                    future.set_result(work())
                except BaseException as exc:  # noqa: BLE001 - delivered to the waiter
                    if isinstance(exc, DeviceFailedError):
                        self.report_device_failure(exc)
                    future.set_exception(exc)
                continue
            if batch:
                # The worker's log lines (batch, load, failure) carry the ids of the requests they are for.
                with request_context.serving(",".join(job.request_id for job in batch)):
                    self._run_batch(batch)
            with self._cond:
                self._running = []

    def _collect_batch(self) -> list[Job]:
        """With the lock held: the next job in turn, plus compatible ones arriving within the batch window."""
        head = self._queue.pop_next(
            lambda job: self._residency.loads_without_eviction(job.plan.model), self.config.swap_patience_s
        )
        if head is None:
            return []
        batch = [head]
        self._running = batch  # grown in place: `abort` sees the jobs held while the window is open
        window = self.config.batch_window_s
        # Alone (no other job admitted, no other request arriving): nothing can join, so waiting would only add
        # the window to its latency. Counts are written on the event loop; a stale read costs one wait at most.
        if window <= 0 or (self._in_flight <= 1 and self._arriving <= 1):
            return batch
        key = head.plan.batch_key
        room = self.config.max_batch - head.plan.n
        deadline = time.monotonic() + window
        while room > 0:
            more = self._queue.take_compatible(key, room)
            batch += more
            room -= sum(job.plan.n for job in more)
            remaining = deadline - time.monotonic()
            if room <= 0 or remaining <= 0 or self._closed:
                break
            self._cond.wait(remaining)
        return batch

    def _run_batch(self, batch: list[Job]) -> None:
        model = batch[0].plan.model
        started = time.monotonic()
        for job in batch:
            self.metrics.queue_wait.labels(model).observe(started - job.enqueued_at)
        fan_out = BatchProgress(batch)
        images = sum(job.plan.n for job in batch)
        self.metrics.running.set(len(batch))
        log.info("batch model=%s jobs=%d images=%d", model, len(batch), images)
        try:
            fan_out.abort_if_all_cancelled()
            if self._device_failure is not None:  # admitted just before the failure: never touch the dead device
                raise DeviceFailedError(self._device_failure.message)
            backend = self._residency.acquire(model)
            # Counted here, on the worker: fast tokenizers are not safe to share across threads.
            tokens = [backend.count_tokens(job.usage_prompt) for job in batch]
            self.metrics.backend_calls.labels(model).inc()
            self.metrics.batch_images.observe(images)
            self.metrics.batch_jobs.observe(len(batch))
            flat = backend.generate([job.plan for job in batch], fan_out)
        except GenerationCancelled:
            return  # every job's waiter already has its answer (or is gone)
        except BaseException as exc:  # noqa: BLE001 - one batch's failure goes to each of its jobs
            self._fail(batch, exc)
            return
        finally:
            self.metrics.running.set(0)
        seconds = time.monotonic() - started
        for job, job_images, job_tokens in zip(batch, fan_out.images_of(flat), tokens, strict=True):
            if job.settle(GenerationResult(images=job_images, prompt_tokens=job_tokens, seconds=seconds)):
                self.metrics.images.labels(model).inc(len(job_images))
                self.metrics.latency.labels(model).observe(time.monotonic() - job.enqueued_at)

    def _fail(self, batch: list[Job], exc: BaseException) -> None:
        code = exc.code if isinstance(exc, LocalImgError) and exc.code else type(exc).__name__
        model = batch[0].plan.model
        if isinstance(exc, LocalImgError):
            log.warning("batch failed: %s", exc.message)
        else:
            log.error("batch failed", exc_info=exc)
        if code == OUT_OF_MEMORY:
            self.metrics.oom.labels(model).inc()
        if isinstance(exc, DeviceFailedError):  # first: a waiter woken by the error finds the engine failed
            self.report_device_failure(exc)
        for job in batch:
            if job.settle(error=exc):
                self.metrics.errors.labels(model, code).inc()

    def report_device_failure(self, failure: DeviceFailedError) -> None:
        """The device is lost to this process (found by the worker, or by other work on the device such as the
        learned matting): refuse every new job, and fail the queued ones now with the same 503 (each would fail
        the same way) rather than after a wait. Any thread may call it."""
        with self._cond:
            first = self._device_failure is None
            if first:
                self._device_failure = failure
            self._accepting = False
            jobs = self._queue.drain()
            self.metrics.waiting.set(0)
        if first:
            log.critical("device failed; no job can run until the server restarts", exc_info=failure.__cause__)
        for job in jobs:
            if job.settle(error=failure):
                self.metrics.errors.labels(job.plan.model, failure.code or "device_failed").inc()
