"""FairQueue on its own: turn order, merging and the swap-patience preference, without an engine."""

from __future__ import annotations

import time
from collections.abc import Callable

from localimg.service.scheduler import FairQueue, Job
from tests.service.standin import plan


def job(client: str, seed: int, model: str = "m", waited_s: float = 0.0) -> Job:
    queued = Job(plan(seed, model=model), client)
    queued.enqueued_at = time.monotonic() - waited_s
    return queued


def seeds(jobs: list[Job]) -> list[int]:
    return [j.plan.seeds[0] for j in jobs]


def next_seed(queue: FairQueue, prefer: Callable[[Job], bool] | None = None, patience_s: float = 0.0) -> int:
    popped = queue.pop_next(prefer, patience_s)
    assert popped is not None
    return popped.plan.seeds[0]


def test_merging_takes_only_each_clients_next_job_so_an_earlier_job_is_not_overtaken_forever():
    queue = FairQueue()
    queue.push(job("b", 1, "y"))
    for queued in (job("a", 10, "x"), job("a", 11, "y"), job("a", 12, "y")):
        queue.push(queued)
    queue.push(job("b", 2, "y"))
    head = queue.pop_next()
    assert head is not None and head.plan.seeds == (1,)
    # a's next job is for model x: a's later y jobs wait behind it instead of joining b's batch.
    assert seeds(queue.take_compatible(head.plan.batch_key, room=4)) == [2]
    assert next_seed(queue) == 10


def test_a_preferred_later_job_goes_first_within_the_patience_and_the_skipped_client_keeps_its_turn():
    queue = FairQueue()
    queue.push(job("a", 1, "not-loaded"))
    queue.push(job("b", 2, "loaded"))
    queue.push(job("c", 3, "loaded"))

    def loaded(candidate: Job) -> bool:
        return candidate.plan.model == "loaded"

    assert next_seed(queue, loaded, patience_s=30) == 2
    assert next_seed(queue, loaded, patience_s=30) == 3
    assert next_seed(queue, loaded, patience_s=30) == 1


def test_past_the_patience_the_turn_order_wins():
    queue = FairQueue()
    queue.push(job("a", 1, "not-loaded", waited_s=31))
    queue.push(job("b", 2, "loaded"))
    assert next_seed(queue, lambda j: j.plan.model == "loaded", patience_s=30) == 1


def test_finished_jobs_are_dropped_without_costing_their_client_its_turn():
    queue = FairQueue()
    cancelled = job("a", 1)
    cancelled.cancelled.set()
    queue.push(cancelled)
    queue.push(job("a", 2))
    queue.push(job("b", 3))
    assert next_seed(queue) == 2
    assert len(queue) == 1
