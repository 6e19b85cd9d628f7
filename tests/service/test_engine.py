"""The engine's queueing, micro-batching, fairness, cancellation, overload and memory budget, with a stand-in
backend (tests/service/standin.py). Each test runs its own event loop and closes its engine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from contextlib import ExitStack

import pytest

from localimg import request_context
from localimg.backends.base import StepProgress
from localimg.errors import (
    OUT_OF_MEMORY,
    DeviceFailedError,
    GenerationError,
    ModelUnavailableError,
    OverloadedError,
    RequestTimeoutError,
    ServerBusyError,
)
from localimg.service.engine import Engine, EngineConfig
from localimg.service.scheduler import GenerationResult
from tests.service.standin import StandInBackend, colour, plan


def run(test: Callable[[], Awaitable[None]], engine: Engine) -> None:
    """Run `test` on its own event loop (20 s at most), then close `engine` whatever happened."""
    try:
        asyncio.run(asyncio.wait_for(test(), 20))
    finally:
        engine.close()


def engine_for(*backends: StandInBackend, **config: object) -> Engine:
    return Engine({b.name: b for b in backends}, config=EngineConfig(**config))  # type: ignore[arg-type]


async def held(engine: Engine, backend: StandInBackend, client: str = "blocker") -> asyncio.Task[GenerationResult]:
    """Start a job that keeps the worker busy until `backend.release` is set."""
    backend.hold = True
    task = asyncio.create_task(engine.generate(plan(9000, model=backend.name, width=16), client=client))
    assert await asyncio.to_thread(backend.started.wait, 5)
    return task


def pixel(result: GenerationResult, i: int = 0) -> tuple[int, int, int]:
    return result.images[i].getpixel((0, 0))  # type: ignore[return-value]


def test_compatible_jobs_are_merged_into_one_backend_call():
    backend = StandInBackend()
    engine = engine_for(backend, batch_window_s=0.01, max_batch=8)

    async def test() -> None:
        blocker = await held(engine, backend)
        tasks = [asyncio.create_task(engine.generate(plan(100 + 10 * i), client=f"c{i}")) for i in range(4)]
        odd = asyncio.create_task(engine.generate(plan(500, width=24), client="c9"))
        await asyncio.sleep(0.05)  # let every job reach the queue before the worker is released
        backend.release.set()
        results = await asyncio.gather(blocker, *tasks, odd)
        for i, result in enumerate(results[1:5]):
            assert [pixel(result)] == [colour(100 + 10 * i)] and result.prompt_tokens == 2
        assert pixel(results[5]) == colour(500) and results[5].images[0].size == (24, 8)
        assert [len(call) for call in backend.calls] == [1, 4, 1]
        assert engine.metrics.registry.get_sample_value("localimg_backend_calls_total", {"model": "m"}) == 3

    run(test, engine)


@pytest.mark.parametrize(("arriving", "calls"), [(0, [1, 1]), (1, [1, 1]), (2, [2])])
def test_a_lone_job_waits_the_window_only_when_another_request_is_arriving(arriving: int, calls: list[int]):
    """A job alone at an idle worker starts at once, unless the HTTP layer holds another request (its body still
    being read) that may join it. A 5 s window and a second job 0.3 s later tell the two apart."""
    backend = StandInBackend()
    engine = engine_for(backend, batch_window_s=5.0, max_batch=8)

    async def test() -> None:
        with ExitStack() as requests:
            for _ in range(arriving):
                requests.enter_context(engine.request_arriving())
            first = asyncio.create_task(engine.generate(plan(1), client="a"))
            await asyncio.sleep(0.3)
            second = asyncio.create_task(engine.generate(plan(2), client="b"))
            assert [pixel(r) for r in await asyncio.gather(first, second)] == [colour(1), colour(2)]

    run(test, engine)
    assert [len(call) for call in backend.calls] == calls


def test_window_zero_disables_merging_and_max_batch_counts_images():
    for window, max_batch, expected in [(0.0, 8, [1, 1, 1, 1]), (0.01, 6, [1, 2, 1])]:
        backend = StandInBackend()
        engine = engine_for(backend, batch_window_s=window, max_batch=max_batch)

        async def test(backend: StandInBackend = backend, engine: Engine = engine) -> None:
            blocker = await held(engine, backend)
            tasks = [asyncio.create_task(engine.generate(plan(10 * i, n=3), client=f"c{i}")) for i in range(3)]
            await asyncio.sleep(0.05)
            backend.release.set()
            results = await asyncio.gather(blocker, *tasks)
            assert [[pixel(r, j) for j in range(3)] for r in results[1:]] == [
                [colour(10 * i + j) for j in range(3)] for i in range(3)
            ]

        run(test, engine)
        assert [len(call) for call in backend.calls] == expected


def test_clients_are_served_round_robin():
    backend = StandInBackend()
    engine = engine_for(backend, batch_window_s=0.0)

    async def test() -> None:
        blocker = await held(engine, backend, client="greedy")
        # Different widths: nothing merges, so the call order is the scheduling order.
        greedy = [asyncio.create_task(engine.generate(plan(i, width=8 * (i + 1)), client="greedy")) for i in range(4)]
        await asyncio.sleep(0.02)
        polite = asyncio.create_task(engine.generate(plan(100, n=1), client="polite"))
        await asyncio.sleep(0.02)
        backend.release.set()
        await asyncio.gather(blocker, *greedy, polite)
        order = [call[0].seeds[0] for call in backend.calls[1:]]
        assert order.index(100) <= 1, f"the second client waited behind more than one greedy job: {order}"

    run(test, engine)


def test_step_progress_is_rebased_per_request():
    backend = StandInBackend()
    engine = engine_for(backend, batch_window_s=0.01)
    seen: dict[str, list[tuple[range, list[tuple[int, int, int]]]]] = {"a": [], "b": []}

    def recorder(name: str) -> Callable[[StepProgress], None]:
        def on_step(progress: StepProgress) -> None:
            seen[name].append((progress.images, [im.getpixel((0, 0)) for im in progress.preview()]))

        return on_step

    async def test() -> None:
        blocker = await held(engine, backend)
        a = asyncio.create_task(engine.generate(plan(10, n=2), recorder("a"), client="a"))
        b = asyncio.create_task(engine.generate(plan(20, n=1), recorder("b"), client="b"))
        await asyncio.sleep(0.05)
        backend.release.set()
        await asyncio.gather(blocker, a, b)

    run(test, engine)
    assert [len(call) for call in backend.calls] == [1, 2]
    assert seen["a"] == [(range(0, 2), [colour(10), colour(11)])] * 3
    assert seen["b"] == [(range(0, 1), [colour(20)])] * 3


def test_cancelling_one_request_keeps_the_batch_cancelling_all_aborts_it():
    backend = StandInBackend(steps=4)
    engine = engine_for(backend, batch_window_s=0.05)

    async def test() -> None:
        backend.hold = True
        first = asyncio.create_task(engine.generate(plan(1), client="a"))
        second = asyncio.create_task(engine.generate(plan(2), client="b"))
        assert await asyncio.to_thread(backend.started.wait, 5)
        assert [len(call) for call in backend.calls] == [2]
        first.cancel()
        await asyncio.sleep(0.02)
        backend.release.set()
        assert pixel(await second) == colour(2)
        with pytest.raises(asyncio.CancelledError):
            await first
        assert backend.aborted == []

        # Now both requests of a merged call go away: the call stops at its next step.
        backend.started.clear()
        backend.release.clear()
        backend.calls.clear()
        third = asyncio.create_task(engine.generate(plan(3), client="a"))
        fourth = asyncio.create_task(engine.generate(plan(4), client="b"))
        assert await asyncio.to_thread(backend.started.wait, 5)
        third.cancel()
        fourth.cancel()
        await asyncio.sleep(0.02)
        backend.release.set()
        await asyncio.gather(third, fourth, return_exceptions=True)
        while not backend.aborted:
            await asyncio.sleep(0.01)

    run(test, engine)
    assert len(backend.aborted) == 1 and "cancelled" in str(backend.aborted[0])
    assert engine.metrics.registry.get_sample_value("localimg_cancelled_total", {"model": "m", "reason": "client"}) == 3


def test_full_queue_is_refused_with_retry_after():
    backend = StandInBackend()
    engine = engine_for(backend, max_queue=2, batch_window_s=0.0)

    async def test() -> None:
        blocker = await held(engine, backend)
        queued = asyncio.create_task(engine.generate(plan(1)))
        await asyncio.sleep(0.01)
        with pytest.raises(ServerBusyError) as info:
            await engine.generate(plan(2))
        assert (info.value.status, info.value.code) == (429, "rate_limit_exceeded") and info.value.retry_after > 0
        backend.release.set()
        await asyncio.gather(blocker, queued)
        assert len((await engine.generate(plan(3))).images) == 1  # room again

    run(test, engine)


def test_timeout_answers_and_cancels_the_job():
    backend = StandInBackend(steps=3)
    engine = engine_for(backend, request_timeout_s=0.2)

    async def test() -> None:
        backend.hold = True
        with pytest.raises(RequestTimeoutError) as info:
            await engine.generate(plan(1))
        assert info.value.status == 504 and info.value.code == "request_timeout"
        backend.release.set()
        while not backend.aborted:
            await asyncio.sleep(0.01)

    run(test, engine)
    assert "cancelled" in str(backend.aborted[0])


def test_an_error_in_a_batched_call_goes_to_every_request():
    backend = StandInBackend()
    engine = engine_for(backend, batch_window_s=0.05)

    async def test() -> None:
        backend.fail_with = GenerationError("boom", code="out_of_memory")
        results = await asyncio.gather(
            *(engine.generate(plan(i), client=f"c{i}") for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, GenerationError) and r.message == "boom" for r in results)
        assert len(backend.calls) == 1
        backend.fail_with = None
        assert len((await engine.generate(plan(7))).images) == 1  # the engine keeps serving

    run(test, engine)
    assert engine.metrics.registry.get_sample_value("localimg_oom_errors_total", {"model": "m"}) == 1
    assert (
        engine.metrics.registry.get_sample_value("localimg_errors_total", {"model": "m", "code": "out_of_memory"}) == 3
    )


def test_the_workers_log_lines_carry_the_ids_of_the_requests_in_the_batch(caplog: pytest.LogCaptureFixture):
    backend = StandInBackend()
    engine = engine_for(backend, batch_window_s=0.05)

    async def one_request(request_id: str) -> None:
        request_context.request_id.set(request_id)  # what the HTTP middleware does, per request task
        with pytest.raises(GenerationError):
            await engine.generate(plan(1), client=request_id)

    async def test() -> None:
        backend.fail_with = GenerationError("boom")
        await asyncio.gather(one_request("req-a"), one_request("req-b"))

    caplog.set_level("INFO", logger="localimg.service.engine")
    caplog.handler.addFilter(request_context.RequestIdFilter())  # as the server's log handler has it
    run(test, engine)
    worker_lines = {r.getMessage(): r.request_id for r in caplog.records if r.threadName != "MainThread"}
    assert worker_lines["batch failed: boom"] == "req-a,req-b"
    assert worker_lines["batch model=m jobs=2 images=2"] == "req-a,req-b"


def test_shutdown_refuses_new_jobs_and_answers_queued_ones():
    backend = StandInBackend()
    engine = engine_for(backend, batch_window_s=0.0)

    async def test() -> None:
        blocker = await held(engine, backend)
        queued = asyncio.create_task(engine.generate(plan(1, width=16)))
        await asyncio.sleep(0.01)
        engine.stop_admission()
        assert not engine.accepting
        with pytest.raises(OverloadedError) as info:
            await engine.generate(plan(2))
        assert info.value.code == "server_shutting_down"
        await asyncio.to_thread(engine.abort)
        backend.release.set()
        for task in (blocker, queued):
            with pytest.raises(OverloadedError):
                await task

    run(test, engine)


def test_a_failed_device_fails_its_batch_the_queued_jobs_and_every_later_one():
    """A sticky CUDA error: every job would fail the same way, so the queued ones are answered at once rather
    than after their turn, and nothing more is admitted; `device_failure` tells the server to get restarted."""
    backend = StandInBackend()
    engine = engine_for(backend, batch_window_s=0.0)
    failure = DeviceFailedError("The server's device (GPU 0) failed (CUDA error: an illegal memory access ...)")

    async def test() -> None:
        blocker = await held(engine, backend)
        queued = [asyncio.create_task(engine.generate(plan(i, width=8), client=f"c{i}")) for i in range(3)]
        await asyncio.sleep(0.05)
        assert engine.device_failure is None
        backend.fail_with = failure
        backend.release.set()
        for task in (blocker, *queued):
            with pytest.raises(DeviceFailedError) as info:
                await task
            assert info.value.status == 503 and info.value.code == "device_failed"
        assert len(backend.calls) == 1  # the queued jobs never reached the device
        assert engine.device_failure == failure.message
        with pytest.raises(DeviceFailedError):
            await engine.generate(plan(7))
        with pytest.raises(DeviceFailedError):
            engine.check_admission()  # streams and uploads are refused before their first byte too

    run(test, engine)
    errors = engine.metrics.registry.get_sample_value("localimg_errors_total", {"model": "m", "code": "device_failed"})
    assert errors == 4


def test_a_device_failure_while_loading_is_a_failed_device_too():
    backend = StandInBackend()
    backend.load_fails_with = DeviceFailedError("The server's device failed (CUDA error: unknown error)")
    engine = engine_for(backend)

    async def test() -> None:
        with pytest.raises(DeviceFailedError):
            await engine.generate(plan(1))
        assert engine.device_failure is not None

    run(test, engine)


def test_least_recently_used_model_is_unloaded_to_fit_the_budget():
    a, b, c = (StandInBackend(name=name, size_bytes=10) for name in "abc")
    engine = engine_for(a, b, c, memory_budget_bytes=25)

    async def test() -> None:
        await engine.preload(["a", "b"])
        assert engine.is_loaded("a") and engine.is_loaded("b")
        await engine.generate(plan(1, model="a"))  # a is now the most recently used
        await engine.generate(plan(2, model="c"))
        assert engine.is_loaded("a") and engine.is_loaded("c") and not engine.is_loaded("b")

    run(test, engine)
    assert engine.metrics.registry.get_sample_value("localimg_model_evictions_total", {"model": "b"}) == 1


@pytest.mark.parametrize(("patience_s", "order", "loads_of_a"), [(30.0, "aab", 1), (0.0, "baa", 2)])
def test_jobs_on_the_loaded_model_go_first_for_the_swap_patience(patience_s: float, order: str, loads_of_a: int):
    # Two models that do not fit together; the client whose turn it is wants the one not loaded.
    journal: list[str] = []
    a, b = (StandInBackend(name=name, size_bytes=10, journal=journal) for name in "ab")
    engine = engine_for(a, b, memory_budget_bytes=15, batch_window_s=0.0, swap_patience_s=patience_s)

    async def test() -> None:
        await engine.preload(["b", "a"])  # a loaded, and b's size known
        blocker = await held(engine, a)
        jobs = [asyncio.create_task(engine.generate(plan(seed, model=model), client=client))
                for seed, model, client in ((1, "b", "x"), (2, "a", "y"), (3, "a", "z"))]  # fmt: skip
        await asyncio.sleep(0.05)  # every job queued, x's turn first
        a.release.set()
        await asyncio.gather(blocker, *jobs)
        assert "".join(journal[1:]) == order
        assert a.loads == loads_of_a and b.loads == 2

    run(test, engine)


def test_a_job_waits_no_longer_than_the_swap_patience():
    a, b = (StandInBackend(name=name, size_bytes=10) for name in "ab")
    engine = engine_for(a, b, memory_budget_bytes=15, batch_window_s=0.0, swap_patience_s=0.1)

    async def test() -> None:
        await engine.preload(["a"])
        blocker = await held(engine, a)
        wants_b = asyncio.create_task(engine.generate(plan(1, model="b"), client="x"))
        await asyncio.sleep(0.2)  # past its patience before the worker picks
        on_a = asyncio.create_task(engine.generate(plan(2, model="a"), client="y"))
        await asyncio.sleep(0.02)
        a.release.set()
        await asyncio.gather(blocker, wants_b, on_a)
        assert [call[0].seeds[0] for call in b.calls] == [1] and a.loads == 2  # b went first, then a came back

    run(test, engine)


def test_a_job_for_a_model_that_just_failed_to_load_is_answered_at_once_not_after_the_patience(
    caplog: pytest.LogCaptureFixture,
):
    a = StandInBackend(name="a", size_bytes=10)
    broken = StandInBackend(name="broken", size_bytes=10)
    broken.load_fails_with = ModelUnavailableError("no weights", code="model_weights_missing")
    engine = engine_for(a, broken, memory_budget_bytes=15, batch_window_s=0.0, swap_patience_s=30.0)

    async def test() -> None:
        await engine.preload(["broken", "a"])
        blocker = await held(engine, a)
        doomed = asyncio.create_task(engine.generate(plan(1, model="broken"), client="x"))
        others = [asyncio.create_task(engine.generate(plan(i, model="a"), client=f"y{i}")) for i in range(2, 5)]
        await asyncio.sleep(0.05)
        a.release.set()
        with pytest.raises(ModelUnavailableError):
            await doomed
        await asyncio.gather(blocker, *others)

    with caplog.at_level("INFO", logger="localimg.service.engine"):
        run(test, engine)
    batches = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("batch model=")]
    assert batches == ["model=a", "model=broken", "model=a", "model=a", "model=a"]  # in x's turn, not after y's


def test_a_model_that_fails_to_load_leaves_the_others_resident_and_is_not_reloaded_at_once(
    monkeypatch: pytest.MonkeyPatch,
):
    good = StandInBackend("good")
    broken = StandInBackend("broken")
    broken.load_fails_with = ModelUnavailableError(
        "model 'broken': /srv/weights/broken holds no weight files", code="model_weights_missing"
    )
    engine = engine_for(good, broken)

    async def test() -> None:
        await engine.preload(["good", "broken"])
        assert engine.is_loaded("good") and not engine.is_loaded("broken")
        assert "/srv/weights/broken" in (engine.load_error("broken") or "")  # for the operator
        for _ in range(3):
            with pytest.raises(ModelUnavailableError) as info:
                await engine.generate(plan(1, model="broken"))
            # The client learns what is wrong, not the server's paths.
            assert info.value.code == "model_weights_missing" and "/srv" not in info.value.message
            assert "'broken' is not available" in info.value.message
        assert broken.loads == 1 and engine.is_loaded("good") and good.loaded
        monkeypatch.setattr("localimg.service.residency.RELOAD_BACKOFF_S", 0.0)  # the back-off has passed
        broken.load_fails_with = None  # the operator put the weights in place
        assert pixel(await engine.generate(plan(5, model="broken"))) == colour(5)
        assert broken.loads == 2 and engine.load_error("broken") is None and engine.is_loaded("good")

    run(test, engine)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("model_weights_unsupported", "its weights are in a file format the server does not load"),
        ("model_kind_mismatch", "its weights are another kind of model than its configuration names"),
        ("model_limits_mismatch", "its weights cannot make every image size its configuration allows"),
        ("model_load_failed", "its weights failed to load"),
    ],
)
def test_a_client_is_told_why_a_model_is_unavailable_in_its_own_words(code: str, reason: str):
    broken = StandInBackend("broken")
    broken.load_fails_with = ModelUnavailableError("/srv/w: model_index.json names FluxPipeline", code=code)
    engine = engine_for(broken)

    async def test() -> None:
        with pytest.raises(ModelUnavailableError) as info:
            await engine.generate(plan(1, model="broken"))
        assert info.value.code == code
        assert (
            info.value.message
            == f"The model 'broken' is not available on this server: {reason}. The server's log says why."
        )

    run(test, engine)


def test_a_model_that_does_not_fit_frees_the_others_and_tries_again():
    resident = StandInBackend("resident")
    large = StandInBackend("large")
    engine = engine_for(resident, large)
    original = large.load

    def load_once_others_are_gone() -> None:
        if resident.loaded:
            large.loads += 1
            raise ModelUnavailableError("model 'large' does not fit", code=OUT_OF_MEMORY)
        original()

    large.load = load_once_others_are_gone  # type: ignore[method-assign]

    async def test() -> None:
        await engine.preload(["resident", "large"])
        assert engine.is_loaded("large") and not engine.is_loaded("resident") and large.loads == 2

    run(test, engine)


def test_any_exception_from_a_load_is_a_clean_unavailable_model():
    odd = StandInBackend("odd")
    odd.load_fails_with = RuntimeError("compile failed: an inductor bug")
    fine = StandInBackend("fine")
    engine = engine_for(odd, fine)

    async def test() -> None:
        await engine.preload(["odd", "fine"])  # goes on past the failure
        assert engine.is_loaded("fine") and "inductor bug" in (engine.load_error("odd") or "")
        with pytest.raises(ModelUnavailableError) as info:
            await engine.generate(plan(1, model="odd"))
        assert info.value.code == "model_load_failed" and "inductor" not in info.value.message

    run(test, engine)


def test_a_preload_cancelled_while_loading_leaves_the_worker_serving():
    """Shutdown during `--preload` cancels the preload while the worker is inside the load: the worker must
    finish it and go on serving, not die on setting the result of a cancelled future."""
    backend = StandInBackend()
    loading, finish_load = threading.Event(), threading.Event()
    original = backend.load

    def slow_load() -> None:
        loading.set()
        assert finish_load.wait(10)
        original()

    backend.load = slow_load  # type: ignore[method-assign]
    engine = engine_for(backend, batch_window_s=0.0, request_timeout_s=10)

    async def test() -> None:
        preload = asyncio.create_task(engine.preload(["m"]))
        assert await asyncio.to_thread(loading.wait, 10)
        preload.cancel()
        await asyncio.sleep(0)
        finish_load.set()
        assert pixel(await engine.generate(plan(3))) == colour(3)

    run(test, engine)


def test_abort_answers_the_job_held_open_for_the_batch_window_at_once():
    backend = StandInBackend()
    engine = engine_for(backend, batch_window_s=5.0, max_batch=8)

    async def test() -> None:
        # Two jobs that cannot merge: the worker holds the first while the window is open for company.
        jobs = [asyncio.create_task(engine.generate(plan(i, width=8 * (i + 1)), client=f"c{i}")) for i in range(2)]
        await asyncio.sleep(0.3)
        engine.abort("Shutting down.")
        for job in jobs:
            with pytest.raises(OverloadedError):
                await asyncio.wait_for(job, 2)  # not after the 5 s window
        assert backend.calls == []

    run(test, engine)


def test_a_retried_preload_does_not_unload_the_model_serving_traffic():
    """/ready retries a preloaded model that failed; one that does not fit next to the resident models stays
    unavailable rather than taking their place (a client's request for it still may)."""
    serving = StandInBackend("serving")
    large = StandInBackend("large")
    large.load_fails_with = ModelUnavailableError("model 'large' does not fit", code=OUT_OF_MEMORY)
    engine = engine_for(serving, large)

    async def test() -> None:
        await engine.generate(plan(1, model="serving"))
        await engine.preload(["large"], evict=False)
        assert engine.is_loaded("serving") and serving.loads == 1 and large.loads == 1
        assert engine.load_error("large") == "model 'large' does not fit"

    run(test, engine)
