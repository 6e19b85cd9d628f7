"""DiffusersBackend on the four tiny families: sizes, counts, seeds, batching, cancellation, out-of-memory."""

from __future__ import annotations

import dataclasses
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from localimg.backends.base import EditInputs, GenerationPlan, StepProgress
from localimg.backends.device import resolve_device
from localimg.backends.diffusers_backend import DiffusersBackend
from localimg.errors import DeviceFailedError, GenerationError, ModelUnavailableError
from localimg.registry import Registry

FAMILIES = ("tiny-flux", "tiny-sd15", "tiny-sdxl", "tiny-sd3")
MAX_BATCH = 2  # so that n=3 runs as two pipeline calls


@pytest.fixture(scope="module")
def registry(tiny_models_toml: Path) -> Registry:
    return Registry.load(tiny_models_toml)


@pytest.fixture(scope="module", params=FAMILIES)
def backend(request: pytest.FixtureRequest, registry: Registry) -> Iterator[DiffusersBackend]:
    spec = registry.resolve(request.param)
    assert spec is not None
    backend = DiffusersBackend(dataclasses.replace(spec, max_batch=MAX_BATCH), resolve_device("cpu"))
    backend.load()
    yield backend
    backend.unload()


def plan_for(
    backend: DiffusersBackend, seeds: tuple[int, ...], width: int = 64, height: int = 64, **extra
) -> GenerationPlan:
    preset = backend.spec.quality["low"]
    return GenerationPlan(
        model=backend.spec.name,
        prompt="a lighthouse on a tiny island, watercolor",
        width=width,
        height=height,
        steps=2,
        guidance_scale=preset.guidance,
        seeds=seeds,
        max_sequence_length=preset.max_sequence_length,
        **extra,
    )


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize(("width", "height", "seeds"), [(256, 256, (7,)), (512, 384, (1, 2, 3))])
def test_size_and_count(backend: DiffusersBackend, width: int, height: int, seeds: tuple[int, ...]):
    images = backend.generate([plan_for(backend, seeds, width, height)])
    assert len(images) == len(seeds)
    for image in images:
        assert image.mode == "RGB"
        assert image.size == (width, height)


def test_same_seed_same_pixels_other_seed_differs(backend: DiffusersBackend):
    first, other = backend.generate([plan_for(backend, (42, 43))])
    (again,) = backend.generate([plan_for(backend, (42,))])
    (again_alone,) = backend.generate([plan_for(backend, (42,))])
    assert np.array_equal(pixels(again), pixels(again_alone))
    assert not np.array_equal(pixels(first), pixels(other))


def test_image_i_is_reproducible_whatever_n(backend: DiffusersBackend):
    seeds = (11, 12, 13)
    batch = backend.generate([plan_for(backend, seeds)])  # runs as [11, 12] + [13]
    for seed, image in zip(seeds, batch, strict=True):
        (alone,) = backend.generate([plan_for(backend, (seed,))])
        # Batched kernels may round differently from single ones: allow one level out of 255.
        assert np.abs(pixels(image) - pixels(alone)).max() <= 1, seed
    (last,) = backend.generate([plan_for(backend, (13,))])
    assert np.array_equal(pixels(batch[2]), pixels(last))  # same batch shape: bit-identical


def test_progress_counts_over_all_calls(backend: DiffusersBackend):
    steps: list[tuple[int, int, range]] = []
    backend.generate([plan_for(backend, (1, 2, 3))], on_step=lambda p: steps.append((p.step, p.steps, p.images)))
    assert steps == [(1, 2, range(0, 2)), (2, 2, range(0, 2)), (1, 2, range(2, 3)), (2, 2, range(2, 3))]


def test_plans_with_one_batch_key_share_a_call(backend: DiffusersBackend):
    red = plan_for(backend, (21,))
    blue = dataclasses.replace(red, prompt="a blue whale in deep water", seeds=(22, 23))
    assert red.batch_key == blue.batch_key
    batch = backend.generate([red, blue])  # [21, 22] + [23] with max_batch 2
    assert len(batch) == 3
    alone = [*backend.generate([red]), *backend.generate([blue])]
    for mixed, own in zip(batch, alone, strict=True):
        assert np.abs(pixels(mixed) - pixels(own)).max() <= 1


def test_negative_prompt(backend: DiffusersBackend):
    (image,) = backend.generate([plan_for(backend, (5,), negative_prompt="blurry, low quality")])
    assert image.size == (64, 64)


class Cancelled(Exception):
    pass


def test_raising_on_step_aborts_and_propagates(backend: DiffusersBackend):
    calls: list[int] = []

    def cancel(progress: StepProgress) -> None:
        calls.append(progress.step)
        raise Cancelled

    with pytest.raises(Cancelled):
        backend.generate([plan_for(backend, (1, 2, 3))], on_step=cancel)
    assert calls == [1]
    assert len(backend.generate([plan_for(backend, (1,))])) == 1  # still usable


def test_count_tokens(backend: DiffusersBackend):
    short = backend.count_tokens("a red fox")
    long = backend.count_tokens("a red fox sitting in a field of tall golden grass, morning mist " * 20)
    assert isinstance(short, int)
    assert 0 < short < long
    assert long > 77  # not truncated to CLIP's window


def test_unload_then_load_again(registry: Registry):
    spec = registry.resolve("tiny-sd15")
    assert spec is not None
    backend = DiffusersBackend(spec, resolve_device("cpu"))
    backend.load()
    backend.unload()
    assert not backend.loaded
    with pytest.raises(ModelUnavailableError, match="not loaded"):
        backend.count_tokens("x")
    backend.load()
    assert backend.count_tokens("a red fox") > 0


@pytest.mark.parametrize("name", FAMILIES)
def test_unload_after_generating_frees_every_weight(registry: Registry, name: str):
    """Eviction under the memory budget relies on it: nothing (previews, prompt cache, edit pipelines derived
    with from_pipe, optimizations) may keep a module of an unloaded pipeline alive."""
    spec = registry.resolve(name)
    assert spec is not None
    backend = DiffusersBackend(spec, resolve_device("cpu"))
    backend.load()
    backend.generate([plan_for(backend, (1,))], on_step=lambda progress: progress.preview())
    picture, mask = Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("L", (64, 64), 255)
    backend.generate([plan_for(backend, (2,), edit=EditInputs(images=(picture,), strength=0.5))])
    backend.generate([plan_for(backend, (3,), edit=EditInputs(images=(picture,), mask=mask, strength=1.0))])
    components = backend._pipe.components  # type: ignore[union-attr]
    modules = [weakref.ref(module) for module in components.values() if isinstance(module, torch.nn.Module)]
    del components
    assert len(modules) >= 3
    backend.unload()
    assert [ref for ref in modules if ref() is not None] == []


OUT_OF_MEMORY = [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB)"),
]


@pytest.fixture(params=OUT_OF_MEMORY, ids=["cuda", "mps"])
def sd15_oom(
    request: pytest.FixtureRequest, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> tuple[DiffusersBackend, list[int]]:
    """A tiny-sd15 backend whose pipeline calls run out of memory for more than `limit[0]` images."""
    spec = registry.resolve("tiny-sd15")
    assert spec is not None
    backend = DiffusersBackend(dataclasses.replace(spec, max_batch=4), resolve_device("cpu"))
    backend.load()
    limit = [1]
    sizes: list[int] = []

    def pipeline_call(self, pipe, items, first, on_step):
        sizes.append(len(items))
        if len(items) > limit[0]:
            raise request.param
        plan = items[0][0]
        return [Image.new("RGB", (plan.width, plan.height))] * len(items)

    monkeypatch.setattr(DiffusersBackend, "_call", pipeline_call)
    backend.sizes = sizes  # type: ignore[attr-defined]
    return backend, limit


def test_out_of_memory_halves_the_batch(sd15_oom):
    backend, limit = sd15_oom
    images = backend.generate([plan_for(backend, (1, 2, 3, 4, 5))])
    assert len(images) == 5
    assert backend.sizes == [4, 2, 1, 1, 1, 1, 1]


def test_out_of_memory_at_one_image_tiles_the_vae_then_gives_up(sd15_oom):
    backend, limit = sd15_oom
    limit[0] = 0
    with pytest.raises(GenerationError) as info:
        backend.generate([plan_for(backend, (1, 2))])
    assert info.value.code == "out_of_memory"
    assert backend.sizes == [2, 1, 1]
    assert backend._pipe.vae.use_tiling and backend._pipe.vae.use_slicing


def test_a_failure_while_preparing_leaves_nothing_loaded(registry: Registry, monkeypatch: pytest.MonkeyPatch):
    # A compile, fp8 or warm-up failure (here an out-of-memory warm-up) must not leave a half-prepared pipeline
    # that reports itself loaded.
    spec = registry.resolve("tiny-sd15")
    assert spec is not None

    def failing_warm_up(*args: object) -> float:
        raise GenerationError("out of memory during the warm-up", code="out_of_memory")

    monkeypatch.setattr("localimg.backends.diffusers_backend.warm_up_pipeline", failing_warm_up)
    backend = DiffusersBackend(spec, resolve_device("cpu"))
    with pytest.raises(ModelUnavailableError) as info:
        backend.load()
    assert info.value.code == "out_of_memory" and "warm-up" in info.value.message
    assert not backend.loaded and backend.optimizations is None and backend.memory_bytes() == 0


def test_a_model_that_does_not_fit_is_freed_before_the_error_reaches_the_caller(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
):
    # The caller may unload other models and load again: the failed attempt's weights must be gone by then, not
    # kept alive by the exception's traceback.
    from localimg.backends import diffusers_backend

    spec = registry.resolve("tiny-sd15")
    assert spec is not None
    pipes: list[weakref.ref] = []
    original = diffusers_backend.load_pipeline

    def loading(*args: object) -> object:
        pipe = original(*args)
        pipes.append(weakref.ref(pipe.unet))

        def out_of_memory(*args: object, **kwargs: object) -> None:
            module = pipe.unet  # as in torch's Module._apply, the failing frame holds what it was moving
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated) moving {type(module).__name__}")

        pipe.to = out_of_memory
        return pipe

    monkeypatch.setattr(diffusers_backend, "load_pipeline", loading)
    backend = DiffusersBackend(spec, resolve_device("cpu"))
    try:
        backend.load()
    except ModelUnavailableError as exc:
        assert exc.code == "out_of_memory"
        gc.collect()
        assert pipes and pipes[0]() is None, "the failed load's weights are still alive inside the except block"
    else:
        pytest.fail("the load did not fail")


def test_a_device_failure_in_the_warm_up_fails_the_device_not_just_the_model(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
):
    """The warm-up runs compiled kernels for the first time: a sticky CUDA error there (raised inside the real
    pipeline call) must reach the engine as DeviceFailedError, not as one model that failed to load."""
    from localimg.testing.faults import DEVICE_FAILURE_PROMPT, OomBudget, inject_faults

    spec = registry.resolve("tiny-flux")
    assert spec is not None
    backend = inject_faults(DiffusersBackend(spec, resolve_device("cpu")), OomBudget(0), device_failure=True)

    def failing_first_call(generate, spec, plan) -> float:  # a warm-up whose first call meets the failure
        generate([dataclasses.replace(plan_for(backend, (1,)), prompt=DEVICE_FAILURE_PROMPT)])
        return 0.0

    monkeypatch.setattr("localimg.backends.diffusers_backend.warm_up_pipeline", failing_first_call)
    with pytest.raises(DeviceFailedError) as info:
        backend.load()
    assert "an illegal memory access" in info.value.message
