"""Optimizations on the tiny pipelines (CPU): each lossless one toggles cleanly and keeps the image."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from localimg.backends.base import EditInputs, GenerationPlan, StepProgress
from localimg.backends.device import resolve_device
from localimg.backends.diffusers_backend import DiffusersBackend
from localimg.backends.optimizations import (
    PromptEmbeddingCache,
    adopt_cuda_graph_trees,
    cloning_outputs,
    resolve_optimizations,
    set_sdpa_priority,
    warm_up_pipeline,
)
from localimg.registry import ImageSize, OptimizeSettings, Registry

OFF = OptimizeSettings(preset="off")


@pytest.fixture(scope="module")
def registry(tiny_models_toml: Path) -> Registry:
    return Registry.load(tiny_models_toml)


def backend_with(registry: Registry, name: str, settings: OptimizeSettings) -> DiffusersBackend:
    spec = registry.resolve(name)
    assert spec is not None
    backend = DiffusersBackend(dataclasses.replace(spec, optimize=settings), resolve_device("cpu"))
    backend.load()
    return backend


def image(
    backend: DiffusersBackend, prompt: str = "a red fox in tall grass", seed: int = 3, steps: int = 2
) -> np.ndarray:
    preset = backend.spec.quality["low"]
    plan = GenerationPlan(
        model=backend.spec.name, prompt=prompt, width=64, height=64, steps=steps, guidance_scale=preset.guidance,
        seeds=(seed,), max_sequence_length=preset.max_sequence_length,
    )  # fmt: skip
    (result,) = backend.generate([plan])
    return np.asarray(result, dtype=np.int16)


def every_kind_of_call(backend: DiffusersBackend, steps: int) -> list[GenerationPlan]:
    """One 64x64 plan each for text to image, image to image and inpainting."""
    source = Image.new("RGB", (64, 64), (200, 40, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    preset = backend.spec.quality["low"]
    return [
        GenerationPlan(
            model=backend.spec.name,
            prompt="a red fox",
            width=64,
            height=64,
            steps=steps,
            guidance_scale=preset.guidance,
            seeds=(4,),
            max_sequence_length=preset.max_sequence_length,
            edit=edit,
        )  # fmt: skip
        for edit in (None, EditInputs((source,), strength=0.6), EditInputs((source,), mask=mask, strength=1.0))
    ]


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd15", "tiny-sdxl", "tiny-sd3"])
@pytest.mark.parametrize("option", ["fuse_qkv", "channels_last", "sync_free"])
def test_lossless_option_keeps_the_image(registry: Registry, name: str, option: str):
    plain = image(backend_with(registry, name, OFF))
    optimized_backend = backend_with(registry, name, dataclasses.replace(OFF, **{option: True}))
    assert getattr(optimized_backend.optimizations, option) or option == "fuse_qkv"
    # float32 on CPU: a fused or re-laid-out matmul rounds differently, by far less than one level of 255.
    assert np.abs(image(optimized_backend) - plain).max() <= 1


@pytest.mark.parametrize(
    "name", ["tiny-flux", "tiny-flux-fill", "tiny-flux-kontext", "tiny-sd15", "tiny-sdxl", "tiny-sd3"]
)
def test_fused_qkv_drops_the_separate_projections_and_serves_every_kind_of_call(registry: Registry, name: str):
    unfused = backend_with(registry, name, OFF)
    backend = backend_with(registry, name, dataclasses.replace(OFF, fuse_qkv=True))
    assert backend.optimizations is not None and backend.optimizations.fuse_qkv
    fused = [m for m in backend._pipe.components.values() if isinstance(m, torch.nn.Module)
             for m in m.modules() if getattr(m, "fused_projections", False)]  # fmt: skip
    assert fused and not any(hasattr(m, "to_qkv") and hasattr(m, "to_k") for m in fused)
    assert backend.memory_bytes() == unfused.memory_bytes()  # the fused copies replace the separate ones
    # Text to image, image to image and inpainting (the VAE encoder's attention is fused too) on the same modules.
    for plan in every_kind_of_call(backend, steps=2):
        (expected,), (got,) = unfused.generate([plan]), backend.generate([plan])
        gap = np.abs(np.asarray(got, dtype=np.float32) - np.asarray(expected, dtype=np.float32))
        assert gap.max() <= 1, (plan.edit, gap.max())


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sdxl"])
def test_prompt_cache_hit_returns_identical_images(registry: Registry, name: str):
    uncached = image(backend_with(registry, name, dataclasses.replace(OptimizeSettings(), prompt_cache=0)))
    backend = backend_with(registry, name, OptimizeSettings(prompt_cache=2))
    cache = backend._pipe.encode_prompt
    assert isinstance(cache, PromptEmbeddingCache)
    first = image(backend)
    assert (cache.hits, cache.misses) == (0, 1)
    second = image(backend, seed=3)
    assert cache.hits == 1
    assert np.array_equal(first, second) and np.array_equal(first, uncached)
    image(backend, prompt="another prompt")
    image(backend, prompt="a third prompt")  # evicts the first (size 2)
    image(backend)
    assert (cache.hits, cache.misses) == (1, 4)


@pytest.mark.parametrize("method", ["first_block", "taylorseer"])
def test_step_cache_skips_blocks_on_some_steps(registry: Registry, method: str):
    steps = 8
    plain = image(backend_with(registry, "tiny-flux", OFF), steps=steps)
    # Every residual change is under this threshold, so first_block reuses the tail blocks after its first step;
    # taylorseer ignores it and predicts the attention outputs between its own refresh steps.
    backend = backend_with(registry, "tiny-flux", dataclasses.replace(OFF, step_cache=method, step_cache_threshold=1e6))
    last_block = backend._pipe.transformer.single_transformer_blocks[-1]
    computed: list[int] = []
    handle = last_block.attn.to_q.register_forward_hook(lambda *_: computed.append(1))
    cached = image(backend, steps=steps)
    handle.remove()
    assert 0 < len(computed) < steps
    assert np.abs(cached - plain).mean() > 0  # lossy by design: why it is off unless asked for


class Cancelled(Exception):
    pass


@pytest.mark.parametrize(
    ("name", "method"),
    [("tiny-flux", "first_block"), ("tiny-flux", "taylorseer"), ("tiny-flux-kontext", "first_block"),
     ("tiny-sd3", "taylorseer")],
)  # fmt: skip
def test_step_cache_runs_every_kind_of_call_and_starts_each_afresh(registry: Registry, name: str, method: str):
    # diffusers names a cache context only in FluxPipeline's text-to-image loop; the edit pipelines, Kontext's and
    # SD3's need the backend's. Each call must start from fresh cache state, even after a cancelled one (TaylorSeer
    # keeps its step count across calls without the backend's reset; first_block happens to recover on its own).
    backend = backend_with(registry, name, dataclasses.replace(OFF, step_cache=method, step_cache_threshold=1e6))
    for plan in every_kind_of_call(backend, steps=6):
        (first,) = backend.generate([plan])

        def cancel(progress: StepProgress) -> None:
            if progress.step == 3:
                raise Cancelled

        with pytest.raises(Cancelled):
            backend.generate([plan], on_step=cancel)
        (again,) = backend.generate([plan])
        assert np.array_equal(np.asarray(first), np.asarray(again)), plan.edit


def test_prompt_cache_bypasses_tensor_arguments():
    import torch

    calls: list[object] = []

    def encode(prompt, prompt_embeds=None):
        calls.append(prompt)
        return torch.ones(2) if prompt_embeds is None else prompt_embeds

    cache = PromptEmbeddingCache(encode, 4)
    out = cache("a", prompt_embeds=None)
    out.add_(1)  # a caller modifying its result does not touch the cache
    assert torch.equal(cache("a"), torch.ones(2))
    cache("a", prompt_embeds=torch.zeros(2))
    assert calls == ["a", "a"] and cache.hits == 1


@pytest.mark.parametrize(("name", "step_cache", "steps"), [("tiny-sd15", None, 2), ("tiny-sd3", "taylorseer", 6)])
def test_warmup_sizes_run_at_load(registry: Registry, name: str, step_cache: str | None, steps: int):
    spec = registry.resolve(name)
    assert spec is not None
    warmups: list[tuple[int, int, int]] = []
    settings = OptimizeSettings(warmup_sizes=(ImageSize(64, 64), ImageSize(96, 64)), step_cache=step_cache)
    backend = DiffusersBackend(dataclasses.replace(spec, optimize=settings), resolve_device("cpu"))
    original = backend.generate

    def recording(batch, on_step=None):
        warmups.extend((plan.width, plan.height, plan.steps) for plan in batch)
        return original(batch, on_step)

    backend.generate = recording  # type: ignore[method-assign]
    backend.load()
    # The tiny models' presets share one guidance and text length: one warm-up per size. With a step cache, enough
    # steps for its cached branch to run (and compile) too.
    assert warmups == [(64, 64, steps), (96, 64, steps)]


CUDA_H100 = ("cuda", (9, 0))


@pytest.mark.parametrize(("compiled", "max_batch", "batches"), [(True, 4, [1, 2]), (True, 1, [1]), (False, 4, [1])])
def test_a_compiled_model_that_batches_warms_up_a_batch_of_two(
    registry: Registry, compiled: bool, max_batch: int, batches: list[int]
):
    spec = registry.resolve("tiny-flux")
    assert spec is not None
    spec = dataclasses.replace(spec, max_batch=max_batch)
    size = ImageSize(64, 64)
    plan = resolve_optimizations(
        OptimizeSettings(compile=compiled, compile_vae=compiled, warmup_sizes=(size,)), "flux", *CUDA_H100, size
    )
    calls: list[list[GenerationPlan]] = []
    warm_up_pipeline(calls.append, spec, plan)
    assert [[p.n for p in call] for call in calls] == [[n] for n in batches]


@pytest.mark.parametrize(
    ("settings", "family", "device", "expected"),
    [
        (OptimizeSettings(), "flux", ("cpu", None), dict(compile=False, fuse_qkv=False, attention="default")),
        (OptimizeSettings(), "flux", CUDA_H100, dict(compile=True, compile_vae=True, fuse_qkv=True, attention="cudnn")),
        (OptimizeSettings(), "sdxl", CUDA_H100, dict(cuda_graphs=True, channels_last=True, attention="flash")),
        (OptimizeSettings(), "flux", ("cuda", (8, 0)), dict(attention="default", fp8=False)),
        (OptimizeSettings(preset="fast"), "flux", CUDA_H100, dict(fp8=True, step_cache="first_block")),
        (OptimizeSettings(preset="fast"), "flux", ("cuda", (8, 0)), dict(fp8=False, step_cache="first_block")),
        (OptimizeSettings(preset="fast"), "sdxl", CUDA_H100, dict(fp8=True, step_cache="off")),
        (OptimizeSettings(preset="fast"), "sd3", CUDA_H100, dict(fp8=True, step_cache="taylorseer")),
        (OptimizeSettings(preset="off"), "flux", CUDA_H100, dict(compile=False, prompt_cache=0, fp8=False)),
        (
            OptimizeSettings(compile=False),
            "flux",
            CUDA_H100,
            dict(compile=False, warmup_sizes=(ImageSize(1024, 1024),)),
        ),
        (OptimizeSettings(compile=False, compile_vae=False), "flux", CUDA_H100, dict(warmup_sizes=())),
        (OptimizeSettings(fp8=True), "flux", ("cpu", None), dict(fp8=False)),
    ],
)
def test_resolve(settings, family, device, expected):
    plan = resolve_optimizations(settings, family, device[0], device[1], ImageSize(1024, 1024))
    for key, value in expected.items():
        assert getattr(plan, key) == value, key


def test_an_attention_choice_goes_first_and_default_puts_torchs_order_back():
    import torch

    set_sdpa_priority("default")  # on a GPU, torch settles its own order at this first attention call
    torchs = list(torch._C._get_sdp_priority_order())
    try:
        set_sdpa_priority("flash")
        chosen = list(torch._C._get_sdp_priority_order())
        assert chosen[0] == int(torch.nn.attention.SDPBackend.FLASH_ATTENTION) and sorted(chosen) == sorted(torchs)
        set_sdpa_priority("math")
        assert torch._C._get_sdp_priority_order()[0] == int(torch.nn.attention.SDPBackend.MATH)
    finally:
        set_sdpa_priority("default")
    assert list(torch._C._get_sdp_priority_order()) == torchs


def test_cuda_graph_outputs_are_copied_before_the_next_replay_can_overwrite_them():
    import torch
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    buffer = torch.arange(4.0)  # stands for a CUDA graph's static output

    def replay(return_dict: bool) -> object:
        return UNet2DConditionOutput(sample=buffer) if return_dict else (buffer,)

    copying = cloning_outputs(replay)
    (as_tuple,) = copying(False)
    as_output = copying(True)
    assert isinstance(as_output, UNet2DConditionOutput)
    buffer.fill_(-1.0)  # the next replay
    assert as_tuple.tolist() == as_output.sample.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_the_copying_wrapper_is_what_a_compiled_module_runs():
    import torch

    module = torch.nn.Linear(4, 4)
    module.compile(backend="eager")
    outputs: list[torch.Tensor] = []

    def compiled(*args: object, **kwargs: object) -> torch.Tensor:
        outputs.append(original(*args, **kwargs))
        return outputs[-1]

    original = module._compiled_call_impl
    module._compiled_call_impl = cloning_outputs(compiled)  # as optimizations._compile installs it
    result = module(torch.ones(1, 4))
    assert len(outputs) == 1 and result is not outputs[0] and torch.equal(result, outputs[0])


def test_cuda_graph_trees_are_set_up_on_a_thread_that_did_not_import_them():
    # torch < 2.13 replays CUDA graphs only where the module's per-thread state exists, and sets it up only in the
    # importing thread (pytorch/pytorch#123177): a second engine's worker failed with a bare AssertionError.
    import threading

    from torch._inductor import cudagraph_trees

    seen: dict[str, object] = {}

    def worker() -> None:
        adopt_cuda_graph_trees()
        seen["in_torch_tls"] = torch._C._is_key_in_tls("tree_manager_containers")  # what torch < 2.13 asserts
        seen["containers"] = cudagraph_trees.get_obj(cudagraph_trees.local, "tree_manager_containers")
        adopt_cuda_graph_trees()  # a second model on the same worker keeps the thread's trees
        seen["kept"] = cudagraph_trees.get_obj(cudagraph_trees.local, "tree_manager_containers") is seen["containers"]

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["in_torch_tls"] is True and seen["kept"] is True
    assert seen["containers"] is not cudagraph_trees.local.tree_manager_containers  # the importing thread's own


def test_fuse_qkv_leaves_sd35_attention_alone():
    # SD3.5's q/k norms and MMDiT-X's dual attention are not handled by diffusers' fused joint processor.
    from types import SimpleNamespace

    from diffusers import SD3Transformer2DModel

    from localimg.backends.optimizations import _fuse_qkv

    sd35 = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8,
        pos_embed_max_size=16, qk_norm="rms_norm", dual_attention_layers=(0,),
    )  # fmt: skip
    assert not _fuse_qkv(SimpleNamespace(transformer=sd35))
    assert not any(getattr(m, "fused_projections", False) for m in sd35.modules())
