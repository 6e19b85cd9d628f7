"""Step caching (lossy, opt-in): diffusers' FirstBlockCache and TaylorSeer hooks on a transformer, one scope per call.

diffusers offers `enable_cache` only on models with its CacheMixin (FLUX's transformer, not SD3's), and only
FluxPipeline's text-to-image loop names a cache context; its img2img, inpaint, Kontext and Fill pipelines, and SD3's,
call the transformer without one, which the hooks refuse ("No cache context is set"). So localimg applies the hooks
itself and runs every pipeline call inside `step_cache_scope`:
- a "cond" context for the whole call (a pipeline that names its own per transformer call overrides it);
- the hooks' state reset first: a cancelled or failed call never reaches the pipeline's own reset, and the next
  image must not start from its cached residuals.
A pipeline without its own contexts that runs true CFG (FLUX edits with a negative prompt: two transformer calls per
step) shares one cache state between both passes: first_block then mostly recomputes (the passes differ), and
TaylorSeer extrapolates across them. Neither is tested for quality; both are opt-in lossy modes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

METHODS = ("first_block", "taylorseer")


def apply_step_cache(denoiser: torch.nn.Module, method: str, threshold: float) -> None:
    """Hook `method` into the transformer `denoiser` (FLUX or SD3)."""
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        TaylorSeerCacheConfig,
        apply_first_block_cache,
        apply_taylorseer_cache,
    )

    if method == "first_block":
        apply_first_block_cache(denoiser, FirstBlockCacheConfig(threshold=threshold))
    elif method == "taylorseer":
        apply_taylorseer_cache(denoiser, TaylorSeerCacheConfig())
    else:
        raise ValueError(f"unknown step cache {method!r}; expected one of {', '.join(METHODS)}")


@contextmanager
def step_cache_scope(denoiser: torch.nn.Module) -> Iterator[None]:
    """Run one pipeline call on fresh cache state, inside a cache context."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    registry = HookRegistry.check_if_exists_or_initialize(denoiser)
    registry.reset_stateful_hooks(recurse=True)
    _set_cache_context(denoiser, CacheContext("cond"))
    try:
        yield
    finally:
        _set_cache_context(denoiser, None)
