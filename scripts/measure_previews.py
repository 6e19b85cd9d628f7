"""Measure what a streaming preview costs next to a denoising step, and whether previews converge.

Runs each model of a models.toml (default: the tiny test models) on a device at one size, times every denoising
step and every preview decode, and prints the mean absolute pixel
difference of each step's preview to the final image. Usage:

    python scripts/measure_previews.py [--config .tiny/models.toml] [--size 1024] [--steps 6] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from localimg.backends.base import GenerationPlan, StepProgress
from localimg.backends.device import resolve_device
from localimg.backends.diffusers_backend import DiffusersBackend
from localimg.registry import Registry


def measure(backend: DiffusersBackend, size: int, steps: int) -> None:
    spec = backend.spec
    preset = spec.quality[spec.auto_quality]
    plan = GenerationPlan(
        model=spec.name, prompt="a lighthouse on a tiny island", width=size, height=size, steps=steps,
        guidance_scale=preset.guidance, seeds=(1,), max_sequence_length=preset.max_sequence_length,
    )  # fmt: skip
    step_times: list[float] = []
    decode_times: list[float] = []
    shown: list[np.ndarray] = []
    last = time.perf_counter()

    def on_step(progress: StepProgress) -> None:
        nonlocal last
        step_times.append(time.perf_counter() - last)
        started = time.perf_counter()
        image = progress.preview()[0]
        decode_times.append(time.perf_counter() - started)
        shown.append(np.asarray(image, dtype=np.float32))
        last = time.perf_counter()

    final = np.asarray(backend.generate([plan], on_step)[0], dtype=np.float32)
    step_ms = 1000 * float(np.median(step_times))
    preview_ms = 1000 * float(np.median(decode_times))
    diffs = " ".join(f"{np.abs(image - final).mean():.1f}" for image in shown)
    print(f"{spec.name} {size}x{size}: step {step_ms:.0f} ms, preview {preview_ms:.0f} ms ({preview_ms / step_ms:.0%})")
    print(f"  mean |preview - final| after each step: {diffs}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=Path(".tiny/models.toml"))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    for spec in Registry.load(args.config):
        backend = DiffusersBackend(spec, device)
        backend.load()
        measure(backend, args.size, args.steps)
        backend.unload()


if __name__ == "__main__":
    main()
