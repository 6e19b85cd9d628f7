"""torch.compile on the CPU (inductor): each way localimg compiles a pipeline runs, and keeps the image.

The GPU adds CUDA graphs and fp8 on top (tests/gpu); this proves, on any machine, that the compile calls, the
graph breaks a step cache needs, the preview tap and the compiled VAE decoder fit together. Each case compiles
once: about 30 s for tiny-flux and 70 s for tiny-sd15 on two cores.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from localimg.backends.base import GenerationPlan, StepProgress
from localimg.backends.device import resolve_device
from localimg.backends.diffusers_backend import DiffusersBackend
from localimg.registry import OptimizeSettings, Registry

# What compile runs with on an H100 by default (less cuDNN attention, which a CPU lacks), compared with the same
# options uncompiled.
LOSSLESS = dict(fuse_qkv=True, channels_last=True, sync_free=True)
CASES = {
    # FLUX compiles its repeated blocks; with a step cache, whose per-step decision is a graph break.
    "tiny-flux": dict(LOSSLESS, step_cache="first_block", step_cache_threshold=0.5),
    # A UNet compiles whole; on CUDA with CUDA graphs ("reduce-overhead"), which inductor skips on a CPU.
    "tiny-sd15": dict(LOSSLESS, cuda_graphs=True),
}


def generate(registry: Registry, name: str, settings: OptimizeSettings) -> tuple[np.ndarray, list[tuple[int, int]]]:
    spec = registry.resolve(name)
    assert spec is not None
    backend = DiffusersBackend(dataclasses.replace(spec, optimize=settings), resolve_device("cpu"))
    backend.load()
    preset = spec.quality["low"]
    plan = GenerationPlan(
        model=name, prompt="a lighthouse at dawn", width=64, height=64, steps=4, guidance_scale=preset.guidance,
        seeds=(5,), max_sequence_length=preset.max_sequence_length,
    )  # fmt: skip
    previews: list[tuple[int, int]] = []

    def on_step(progress: StepProgress) -> None:
        if progress.step == 2:
            previews.extend(image.size for image in progress.preview())

    (image,) = backend.generate([plan], on_step=on_step)
    backend.unload()
    return np.asarray(image, dtype=np.int16), previews


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_pipeline_keeps_the_image(tiny_models_toml: Path, name: str):
    registry = Registry.load(tiny_models_toml)
    eager = OptimizeSettings(preset="off", **CASES[name])
    expected, _ = generate(registry, name, eager)

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = dataclasses.replace(eager, compile=True, compile_vae=True, warmup_sizes=())
    image, previews = generate(registry, name, compiled)

    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # something really was compiled
    assert previews == [(64, 64)]
    # float32 on a CPU: inductor's fused kernels round differently, by far less than one level of 255.
    assert np.abs(image - expected).max() <= 1
