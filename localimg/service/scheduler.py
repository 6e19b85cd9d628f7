"""Which jobs run next, and together: a fair queue with micro-batching, and the fan-out of one batched call's
step callback to the requests in it. No threads or torch here; `engine.py` drives it from its worker.

Batching: jobs whose `GenerationPlan.batch_key` are equal (same model, size, steps, guidance scale, text length,
whether a negative prompt is used; never two edits) share one backend call; their prompts and seeds may
differ, and each image still depends on its own seed only (up to rounding: kernels at another batch size may
change a pixel value by one). A batch holds at most the engine's `max_batch` images (a
job's `n` counts whole); a job larger than that runs alone (the backend splits it into calls of the model's
`max_batch`).

Fairness: clients (API key or remote address) are served round-robin, one job per client per turn, both for
the job that opens a batch and for the jobs merged into it (a client's jobs run in the order it sent them), so
one client's many jobs or large `n` cannot keep another client's job waiting for more than one turn, except
as below.

Model swaps: when the job whose turn it is needs a model that would unload another (the memory budget holds
not all of them), and a later client's next job runs on what is loaded, that job goes first, for up to the
engine's swap patience from the first job's admission; the skipped client keeps its turn. Alternating clients
of two models that do not fit together would otherwise reload a model for every job (tens of seconds each).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from localimg.backends.base import StepProgress
from localimg.errors import GenerationCancelled

if TYPE_CHECKING:
    from PIL import Image

    from localimg.backends.base import GenerationPlan, StepCallback


@dataclass(frozen=True)
class GenerationResult:
    images: list[Image.Image]
    prompt_tokens: int
    seconds: float


@dataclass(eq=False)
class Job:
    """One request's generation, from admission to its result. `future` is settled exactly once."""

    plan: GenerationPlan
    client: str
    on_step: StepCallback | None = None
    request_id: str = "-"
    usage_prompt: str = ""  # the text whose tokens the result reports
    enqueued_at: float = field(default_factory=time.monotonic)
    future: Future[GenerationResult] = field(default_factory=Future)
    # Set from the event loop (client gone, timeout) or by the worker (its own step callback failed); the
    # worker stops delivering to this job and aborts a call only once every job in it is cancelled.
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return self.cancelled.is_set() or self.future.done()

    def settle(self, result: GenerationResult | None = None, error: BaseException | None = None) -> bool:
        """Deliver the result or error unless the job already has one (or its waiter gave up)."""
        if self.future.done():
            return False
        try:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)  # type: ignore[arg-type]
        except Exception:  # cancelled by the waiter between the check and the set  # noqa: BLE001
            return False
        return True


class FairQueue:
    """Jobs per client, served round-robin. Not thread-safe: the engine holds its lock around every call."""

    def __init__(self) -> None:
        self._clients: OrderedDict[str, deque[Job]] = OrderedDict()  # order = whose turn comes next

    def __len__(self) -> int:
        return sum(len(jobs) for jobs in self._clients.values())

    def push(self, job: Job) -> None:
        self._clients.setdefault(job.client, deque()).append(job)

    def discard(self, job: Job) -> None:
        jobs = self._clients.get(job.client)
        if jobs is not None and job in jobs:
            jobs.remove(job)
            if not jobs:
                del self._clients[job.client]

    def drain(self) -> list[Job]:
        """Remove and return every queued job."""
        jobs = [job for queue in self._clients.values() for job in queue]
        self._clients.clear()
        return jobs

    def pop_next(self, prefer: Callable[[Job], bool] | None = None, patience_s: float = 0.0) -> Job | None:
        """The first job of the client whose turn it is; that client goes to the back of the line. With `prefer`:
        if that job is not preferred and was admitted less than `patience_s` ago, the next job of the first later
        client whose next job is preferred, if any, instead."""
        heads = self._live_heads()
        if not heads:
            return None
        client, job = heads[0]
        if prefer is not None and not prefer(job) and time.monotonic() - job.enqueued_at < patience_s:
            client, job = next(((c, j) for c, j in heads[1:] if prefer(j)), (client, job))
        self._clients[client].popleft()
        self._served(client)
        return job

    def _live_heads(self) -> list[tuple[str, Job]]:
        """Each client's next job, in turn order, after dropping the jobs already finished (cancelled)."""
        heads = []
        for client in list(self._clients):
            jobs = self._clients[client]
            while jobs and jobs[0].done:
                jobs.popleft()
            if jobs:
                heads.append((client, jobs[0]))
            else:
                del self._clients[client]
        return heads

    def take_compatible(self, key: Hashable, room: int) -> list[Job]:
        """Clients' next jobs with `batch_key == key` and at most `room` images in all, in turn order, several
        rounds. Only a client's next job: merging a later one would send the client to the back of the line
        while its next job, for another model or size, waited."""
        taken: list[Job] = []
        progress = True
        while room > 0 and progress:
            progress = False
            for client, job in self._live_heads():
                if job.plan.batch_key != key or job.plan.n > room:
                    continue
                self._clients[client].popleft()
                self._served(client)
                taken.append(job)
                room -= job.plan.n
                progress = True
                if room <= 0:
                    break
        return taken

    def _served(self, client: str) -> None:
        jobs = self._clients.pop(client)
        if jobs:
            self._clients[client] = jobs


class BatchProgress:
    """The step callback of one batched backend call, fanned out per job.

    The backend reports flat image indexes over the whole batch; each job's `on_step` sees only the calls that
    make some of its images, with `images` rebased to its own 0-based indexes and a `preview()` returning only
    its images (one decode per step, shared by the jobs that ask). Raises GenerationCancelled, aborting the
    call, once every job in it is cancelled.
    """

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.offsets: list[int] = []
        start = 0
        for job in jobs:
            self.offsets.append(start)
            start += job.plan.n

    def __call__(self, progress: StepProgress) -> None:
        self.abort_if_all_cancelled()
        call = progress.images
        shared = _SharedPreview(progress.preview)
        for job, start in zip(self.jobs, self.offsets, strict=True):
            if job.on_step is None or job.done:
                continue
            low, high = max(call.start, start), min(call.stop, start + job.plan.n)
            if low >= high:
                continue
            mine = StepProgress(
                progress.step,
                progress.steps,
                range(low - start, high - start),
                lambda low=low, high=high: shared.get()[low - call.start : high - call.start],
            )
            try:
                job.on_step(mine)
            except Exception as exc:  # this request's callback cancels this request only
                job.settle(error=exc)
                job.cancelled.set()
        self.abort_if_all_cancelled()

    def abort_if_all_cancelled(self) -> None:
        if all(job.done for job in self.jobs):
            raise GenerationCancelled("Every request in the batch was cancelled.", code="cancelled")

    def images_of(self, images: list[Image.Image]) -> list[list[Image.Image]]:
        """Split the backend's flat result per job."""
        return [images[start : start + job.plan.n] for job, start in zip(self.jobs, self.offsets, strict=True)]


class _SharedPreview:
    def __init__(self, decode: Callable[[], list[Image.Image]]) -> None:
        self._decode = decode
        self._images: list[Image.Image] | None = None

    def get(self) -> list[Image.Image]:
        if self._images is None:
            self._images = self._decode()
        return self._images
