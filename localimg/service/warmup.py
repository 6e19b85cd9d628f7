"""Warm-up at start: one low-quality image per configured size and loaded model, so the first client request
does not pay for first-call work (kernel selection, allocator growth, lazy initialisation)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from localimg.backends.base import GenerationPlan
from localimg.errors import LocalImgError
from localimg.registry import ImageSize, SizeLimits

if TYPE_CHECKING:
    from localimg.registry import Registry
    from localimg.service.engine import Engine

log = logging.getLogger(__name__)


def parse_sizes(sizes: tuple[str, ...]) -> list[ImageSize]:
    """`("512x512", ...)` -> sizes; raises ValueError naming the flag on a malformed one."""
    parsed = [ImageSize.parse(text) for text in sizes]
    bad = [text for text, size in zip(sizes, parsed, strict=True) if size is None]
    if bad:
        raise ValueError(f"--warmup: {', '.join(bad)} is not WIDTHxHEIGHT")
    return [size for size in parsed if size is not None]


async def warm_up_models(engine: Engine, registry: Registry, models: list[str], sizes: tuple[str, ...]) -> None:
    for name in models:
        spec = registry.resolve(name)
        if spec is None:
            continue
        preset = spec.quality["low"]
        for size in parse_sizes(sizes):
            refusal = _refusal(spec.limits, size)
            if refusal is not None:  # no client can ask this model for it
                log.warning("warm-up of %s skips %s: %s", name, size, refusal)
                continue
            plan = GenerationPlan(
                model=name, prompt="warm-up", width=size.width, height=size.height, steps=preset.steps,
                guidance_scale=preset.guidance, seeds=(0,), max_sequence_length=preset.max_sequence_length,
            )  # fmt: skip
            started = time.perf_counter()
            try:
                await engine.generate(plan, client="warm-up")
            except LocalImgError as exc:
                log.warning("warm-up of %s at %s failed: %s", name, size, exc.message)
                continue
            except Exception:  # a pipeline error at this size: the model may still serve others, so go on
                log.exception("warm-up of %s at %s failed", name, size)
                continue
            log.info("warmed up %s at %s in %.1f s", name, size, time.perf_counter() - started)


def _refusal(limits: SizeLimits, size: ImageSize) -> str | None:
    if not limits.fits(size):
        return f"outside its limits (sides {limits.min_side}-{limits.max_side}, at most {limits.max_pixels} pixels)"
    if not limits.divides(size):
        return f"its sides must be multiples of {limits.multiple_of}"
    return None
