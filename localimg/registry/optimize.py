"""`[models.NAME.optimize]`: a model's speed options (applied by localimg/backends/optimizations.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localimg.errors import RegistryError
from localimg.registry.values import Family, ImageSize, reject_unknown, resolve_path, typed_value

OPTIMIZE_PRESETS = ("off", "lossless", "fast")
ATTENTION_CHOICES = ("auto", "default", "cudnn", "flash", "efficient", "math")
STEP_CACHES = ("off", "first_block", "taylorseer")
# The step caches diffusers' hooks can run per family, the "fast" preset's first. first_block needs every block to
# return the text stream it caches, which SD3's last block (context_pre_only) does not.
FAMILY_STEP_CACHES: dict[str, tuple[str, ...]] = {"flux": ("first_block", "taylorseer"), "sd3": ("taylorseer",)}
_TRISTATE_KEYS = ("compile", "compile_vae", "compile_dynamic", "cuda_graphs", "fuse_qkv", "channels_last", "sync_free")


@dataclass(frozen=True)
class OptimizeSettings:
    """A model's speed options. `None` means "auto": decided per device and family when the model loads
    (lossless options on for CUDA, everything but the prompt cache off elsewhere).

    `preset` sets the defaults of the others: "off" (plain diffusers), "lossless" (same images, faster) or "fast"
    (lossless plus the lossy fp8 GEMMs and a step cache; images change). Keys given explicitly win.
    """

    preset: str = "lossless"
    attention: str = "auto"  # SDPA backend put first in torch's priority order
    attention_dispatch: str | None = None  # a diffusers attention-dispatcher backend name, e.g. "_native_cudnn"
    compile: bool | None = None  # regional torch.compile of the repeated blocks (whole UNet for UNet families)
    compile_vae: bool | None = None  # torch.compile of the VAE decoder
    compile_dynamic: bool | None = None  # torch.compile(dynamic=...); None: torch decides (dynamic after a recompile)
    cuda_graphs: bool | None = None  # UNet families: compile with mode="reduce-overhead"
    fuse_qkv: bool | None = None
    channels_last: bool | None = None  # UNet and VAE in channels_last memory format
    sync_free: bool | None = None  # start every schedule at index 0 instead of searching it (a device sync)
    prompt_cache: int = 32  # prompt embeddings kept (LRU); 0 turns the cache off
    fp8: bool | None = None  # lossy: torchao fp8 dynamic quantization of the denoiser (CUDA sm89+ only)
    step_cache: str | None = None  # lossy: "off" | "first_block" (flux) | "taylorseer" (flux, sd3)
    step_cache_threshold: float = 0.05  # first_block: residual change under which the other blocks are skipped
    warmup_sizes: tuple[ImageSize, ...] | None = None  # None: the default size when anything is compiled
    compile_cache_dir: Path | None = None  # torch's inductor/triton cache; None: torch's default (or its env vars)


def parse_optimize(value: Any, family: Family, base_dir: Path, ctx: str) -> OptimizeSettings:
    """Validate an `[models.NAME.optimize]` table."""
    if not isinstance(value, dict):
        raise RegistryError(f"{ctx}: optimize must be a table")
    allowed = {f for f in OptimizeSettings.__dataclass_fields__}
    reject_unknown(value, allowed, ctx.split(": ")[0], f"{ctx.split(': ')[1]} optimize")
    fields: dict[str, Any] = {}
    for key, choices in (("preset", OPTIMIZE_PRESETS), ("attention", ATTENTION_CHOICES), ("step_cache", STEP_CACHES)):
        if key in value:
            if value[key] not in choices:
                raise RegistryError(f"{ctx}: optimize.{key} = {value[key]!r}; expected one of {', '.join(choices)}")
            fields[key] = value[key]
    for key in (*_TRISTATE_KEYS, "fp8"):
        if key in value:
            item = value[key]
            if item != "auto" and not isinstance(item, bool):
                raise RegistryError(f'{ctx}: optimize.{key} = {item!r}; expected true, false or "auto"')
            fields[key] = None if item == "auto" else item
    if "attention_dispatch" in value:
        fields["attention_dispatch"] = typed_value(value, "attention_dispatch", str, None, f"{ctx}: optimize")
    if "prompt_cache" in value:
        size = typed_value(value, "prompt_cache", int, 0, f"{ctx}: optimize")
        if not 0 <= size <= 4096:
            raise RegistryError(f"{ctx}: optimize.prompt_cache must be an integer in 0..4096 (0 = off)")
        fields["prompt_cache"] = size
    if "step_cache_threshold" in value:
        threshold = value["step_cache_threshold"]
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold < 1:
            raise RegistryError(f"{ctx}: optimize.step_cache_threshold must be a number between 0 and 1")
        fields["step_cache_threshold"] = float(threshold)
    step_cache = fields.get("step_cache", "off")
    if step_cache != "off" and step_cache not in FAMILY_STEP_CACHES.get(family, ()):
        works = ", ".join(f"{name}: {' or '.join(caches)}" for name, caches in FAMILY_STEP_CACHES.items())
        raise RegistryError(f"{ctx}: optimize.step_cache = {step_cache!r} does not work with {family} ({works})")
    if fields.get("cuda_graphs") and family not in ("sd15", "sdxl"):
        raise RegistryError(f"{ctx}: optimize.cuda_graphs is for the UNet families (sd15, sdxl), not {family}")
    if "warmup_sizes" in value:
        sizes = typed_value(value, "warmup_sizes", list, [], f"{ctx}: optimize")
        parsed = [ImageSize.parse(item) if isinstance(item, str) else None for item in sizes]
        if any(size is None for size in parsed):
            raise RegistryError(f'{ctx}: optimize.warmup_sizes must be a list of "WIDTHxHEIGHT" strings')
        fields["warmup_sizes"] = tuple(size for size in parsed if size is not None)
    if "compile_cache_dir" in value:
        fields["compile_cache_dir"] = resolve_path(
            typed_value(value, "compile_cache_dir", str, "", f"{ctx}: optimize"), base_dir
        )
    return OptimizeSettings(**fields)
