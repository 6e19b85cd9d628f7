"""Speed options for a loaded diffusers pipeline, from a model's `[models.NAME.optimize]` table.

`resolve_optimizations` (pure) turns the table into concrete on/off decisions for one device and family;
`optimize_pipeline` applies them once, right after loading; `warm_up_pipeline` runs the served sizes through it
so compilation never lands on a user's request. Lossless options are on by default on CUDA (same seed, same
image within bf16 rounding); lossy ones (fp8 GEMMs, step caching) only with `preset = "fast"` or explicitly.
On CPU and MPS only the prompt-embedding cache is on by default: compiling there costs more than it gives.

Two choices are process-wide in torch, not per model: the SDPA backend priority and the compile cache folder.
One server runs one device, so the last model loaded decides; `set_sdpa_priority("default")` restores torch's.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from localimg.backends.base import GenerationPlan
from localimg.backends.step_cache import apply_step_cache
from localimg.registry import FAMILY_STEP_CACHES

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from localimg.backends.base import DeviceInfo
    from localimg.registry import ImageSize, ModelSpec, OptimizeSettings

logger = logging.getLogger(__name__)

UNET_FAMILIES = ("sd15", "sdxl")
_SDPA_BACKENDS = {
    "cudnn": torch.nn.attention.SDPBackend.CUDNN_ATTENTION,
    "flash": torch.nn.attention.SDPBackend.FLASH_ATTENTION,
    "efficient": torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION,
    "math": torch.nn.attention.SDPBackend.MATH,
}
WARMUP_STEPS = 2
# With a step cache, enough steps that the cached branch runs too (TaylorSeer first predicts at step 3 and
# refreshes at step 4): under compile it is a graph of its own, which should not compile on a request. first_block
# reuses only when the data say so, so its small reuse graph may still compile on the first request that reuses.
WARMUP_STEPS_WITH_STEP_CACHE = 6


@dataclass(frozen=True)
class OptimizationPlan:
    """What is (to be) applied to one pipeline; every "auto" decided."""

    attention: str  # "default" or a key of _SDPA_BACKENDS
    attention_dispatch: str | None
    compile: bool
    compile_vae: bool
    compile_dynamic: bool | None
    cuda_graphs: bool
    fuse_qkv: bool
    channels_last: bool
    sync_free: bool
    prompt_cache: int
    fp8: bool
    step_cache: str
    step_cache_threshold: float
    warmup_sizes: tuple[ImageSize, ...]

    def describe(self) -> str:
        flags = ("compile", "compile_vae", "cuda_graphs", "fuse_qkv", "channels_last", "sync_free", "fp8")
        on = [name for name in flags if getattr(self, name)]
        extra = [f"attention={self.attention}", f"prompt_cache={self.prompt_cache}", f"step_cache={self.step_cache}"]
        return ", ".join([*on, *extra])


def resolve_optimizations(
    settings: OptimizeSettings,
    family: str,
    device_kind: str,
    capability: tuple[int, int] | None,
    default_size: ImageSize,
) -> OptimizationPlan:
    """Decide every "auto" option for `family` on `device_kind` (pure; no torch work)."""
    cuda = device_kind == "cuda"
    lossless = settings.preset != "off" and cuda
    fast = settings.preset == "fast" and cuda
    unet = family in UNET_FAMILIES

    def pick(value: bool | None, auto: bool) -> bool:
        return auto if value is None else value

    hopper = capability is not None and capability >= (9, 0)
    attention = settings.attention
    if attention == "auto":
        # On an H100: cuDNN attention is ~2x FlashAttention-2 at FLUX shapes, but SDXL with cuDNN first took 3.25 s
        # against 2.86 s (shared/spec/performance.md). Named explicitly: torch itself puts cuDNN first on Hopper
        # with a recent cuDNN.
        attention = ("flash" if unet else "cudnn") if lossless and hopper else "default"
    compile_ = pick(settings.compile, lossless)
    compile_vae = pick(settings.compile_vae, lossless)
    cuda_graphs = pick(settings.cuda_graphs, lossless and unet) and compile_ and unet
    fp8_capable = cuda and capability is not None and capability >= (8, 9)
    fp8 = pick(settings.fp8, fast)
    if fp8 and not fp8_capable:
        logger.warning("optimize.fp8 needs a CUDA GPU of compute capability 8.9+ (Ada/Hopper); not applied")
        fp8 = False
    step_cache = settings.step_cache or (FAMILY_STEP_CACHES.get(family, ("off",))[0] if fast else "off")
    warmup = settings.warmup_sizes
    if warmup is None:
        warmup = (default_size,) if compile_ or compile_vae else ()
    return OptimizationPlan(
        attention=attention,
        attention_dispatch=settings.attention_dispatch,
        compile=compile_,
        compile_vae=compile_vae,
        compile_dynamic=settings.compile_dynamic,
        cuda_graphs=cuda_graphs,
        fuse_qkv=pick(settings.fuse_qkv, lossless),
        channels_last=pick(settings.channels_last, lossless),
        sync_free=pick(settings.sync_free, lossless),
        prompt_cache=settings.prompt_cache if settings.preset != "off" else 0,
        fp8=fp8,
        step_cache=step_cache,
        step_cache_threshold=settings.step_cache_threshold,
        warmup_sizes=tuple(warmup),
    )


def optimize_pipeline(pipe: DiffusionPipeline, spec: ModelSpec, device: DeviceInfo, dtype: str) -> OptimizationPlan:
    """Apply `spec.optimize` to a pipeline already on `device`; returns what was applied."""
    from localimg.backends.device import cuda_capability, torch_device

    plan = resolve_optimizations(spec.optimize, spec.family, device.kind, cuda_capability(device), spec.default_size)
    denoiser = _denoiser(pipe)
    if plan.fuse_qkv:
        plan = replace(plan, fuse_qkv=_fuse_qkv(pipe))
    if plan.channels_last:
        for name in ("unet", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
    set_sdpa_priority(plan.attention, torch_device(device))
    if plan.attention_dispatch is not None:
        if not hasattr(denoiser, "set_attention_backend"):
            raise ValueError(f"{type(denoiser).__name__} has no diffusers attention dispatcher")
        denoiser.set_attention_backend(plan.attention_dispatch)
    if plan.fp8:
        plan = replace(plan, fp8=_quantize_fp8(denoiser, dtype))
    if plan.step_cache != "off":
        apply_step_cache(denoiser, plan.step_cache, plan.step_cache_threshold)
    if plan.sync_free:
        _start_schedules_at_zero(pipe)
    if plan.prompt_cache > 0:
        pipe.encode_prompt = PromptEmbeddingCache(pipe.encode_prompt, plan.prompt_cache)
    if plan.compile or plan.compile_vae:
        _compile(pipe, plan, spec)
    logger.info("model %s optimizations (%s, %s): %s", spec.name, device.kind, dtype, plan.describe())
    return plan


def warm_up_pipeline(
    generate: Callable[[list[GenerationPlan]], object], spec: ModelSpec, plan: OptimizationPlan
) -> float:
    """Run every size of `plan.warmup_sizes` once per distinct quality preset shape (guidance on/off, text
    length), so that compilation and CUDA-graph capture happen now rather than on a request. Compiled models
    that batch also run a batch of two: torch then makes the batch size dynamic (unless `compile_dynamic` is
    false), so a merged call under load does not stop every request in it for a compile; CUDA graphs still
    record one graph, briefly, per new batch size. Returns the seconds it took."""
    sizes = plan.warmup_sizes
    steps = WARMUP_STEPS if plan.step_cache == "off" else WARMUP_STEPS_WITH_STEP_CACHE
    batches = ((0,), (0, 1)) if (plan.compile or plan.compile_vae) and spec.max_batch > 1 else ((0,),)
    started = time.perf_counter()
    shapes = {(preset.guidance, preset.max_sequence_length) for preset in spec.quality.values()}
    for size in sizes:
        for guidance, max_sequence_length in sorted(shapes, key=str):
            for seeds in batches:
                generate([GenerationPlan(
                    model=spec.name, prompt="warm-up", width=size.width, height=size.height, steps=steps,
                    guidance_scale=guidance, seeds=seeds, max_sequence_length=max_sequence_length,
                )])  # fmt: skip
    seconds = time.perf_counter() - started
    if sizes:
        logger.info("model %s warmed up %s in %.1f s", spec.name, ", ".join(map(str, sizes)), seconds)
    return seconds


def set_sdpa_priority(choice: str, device: torch.device | None = None) -> None:
    """Put one SDPA backend first in torch's (process-wide) priority order; "default" restores torch's order.
    `device`: where a CUDA process makes its first attention call, if it has not yet (see below); a CPU device
    makes none."""
    default = _torch_sdpa_priority(device)
    if choice == "default":
        torch._C._set_sdp_priority_order(list(default))
        return
    first = int(_SDPA_BACKENDS[choice])
    torch._C._set_sdp_priority_order([first, *(b for b in default if b != first)])


_torch_priority: tuple[int, ...] | None = None


def _torch_sdpa_priority(device: torch.device | None) -> tuple[int, ...]:
    """torch's own SDPA order, read before anything here changes it. On CUDA torch settles its order at the
    process's first attention call (cuDNN first on Hopper and Blackwell with cuDNN > 9.15), overwriting whatever
    was set before: one tiny call makes that happen now, so the order read is torch's and later choices stick."""
    global _torch_priority
    if _torch_priority is None:
        if torch.cuda.is_available() and (device is None or device.type == "cuda"):
            q = torch.zeros(1, 1, 8, 64, device=device or torch.device("cuda"), dtype=torch.float16)
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
        _torch_priority = tuple(torch._C._get_sdp_priority_order())
    return _torch_priority


class PromptEmbeddingCache:
    """An LRU cache in front of a pipeline's `encode_prompt`: the same prompt arguments return the same
    embeddings (text encoders are deterministic in eval mode), so the results are unchanged. Calls passing
    tensors (precomputed embeddings) bypass it. Returns copies, so a pipeline may modify what it gets."""

    def __init__(self, encode: Callable[..., Any], size: int) -> None:
        self._encode = encode
        self._signature = inspect.signature(encode)
        self._entries: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self.size = size
        self.hits = 0
        self.misses = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = self._key(args, kwargs)
        if key is None:
            return self._encode(*args, **kwargs)
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return _copy(self._entries[key])
        self.misses += 1
        result = self._encode(*args, **kwargs)
        self._entries[key] = _copy(result)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return result

    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        try:
            return tuple((name, _freeze(value)) for name, value in bound.arguments.items())
        except TypeError:
            return None


def _freeze(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, (torch.device, torch.dtype)):
        return str(value)
    raise TypeError(f"not cacheable: {type(value).__name__}")


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(_copy(item) for item in value)
    return value


def _denoiser(pipe: DiffusionPipeline) -> Any:
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def _fuse_qkv(pipe: DiffusionPipeline) -> bool:
    fused = False
    for name in ("transformer", "unet", "vae"):
        module = getattr(pipe, name, None)
        if module is None or not hasattr(module, "fuse_qkv_projections"):
            continue
        config = getattr(module, "config", {})
        if config.get("qk_norm") or config.get("dual_attention_layers"):
            # SD3.5: diffusers' fused joint processor skips the q/k norms (other images) and fails on the second
            # attention of MMDiT-X blocks, which has no text stream.
            logger.info("fuse_qkv skipped for %s: its attention has q/k norms or dual attention", name)
            continue
        try:
            module.fuse_qkv_projections()
            fused = True
        except ValueError as exc:  # e.g. added KV projections, which diffusers cannot fuse
            logger.warning("fuse_qkv skipped for %s: %s", name, exc)
            continue
        freed = _drop_unfused_projections(module)
        logger.debug("fuse_qkv: %s freed %.2f GB of unfused projections", name, freed / 1e9)
    return fused


# A fused projection, and the separate ones it replaces in every forward (the processors diffusers installs with
# the fusion read only the fused one; a cross-attention's query stays separate).
_FUSED_REPLACES = {
    "to_qkv": ("to_q", "to_k", "to_v"),
    "to_kv": ("to_k", "to_v"),
    "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj"),
}


def _drop_unfused_projections(model: torch.nn.Module) -> int:
    """Delete the separate projections diffusers keeps beside the fused ones (to unfuse, which we never do): on
    FLUX 2.15 B parameters, 4.3 GB of device memory no forward reads, and fp8 would quantize them too. Returns
    the bytes freed."""
    freed = 0
    for attention in list(model.modules()):
        if not getattr(attention, "fused_projections", False):
            continue
        for fused, separate in _FUSED_REPLACES.items():
            if not isinstance(getattr(attention, fused, None), torch.nn.Module):
                continue
            for name in separate:
                module = getattr(attention, name, None)
                if isinstance(module, torch.nn.Module):
                    freed += sum(t.numel() * t.element_size() for t in module.parameters())
                    delattr(attention, name)
    return freed


def _start_schedules_at_zero(pipe: DiffusionPipeline) -> None:
    # Without a begin index, the scheduler's first step looks its timestep up in the schedule with nonzero(),
    # a device sync. FLUX and SDXL set it themselves; SD 1.5 and SD3 do not. img2img pipelines set their own
    # begin index after set_timesteps, which still wins.
    scheduler = pipe.scheduler
    if not hasattr(scheduler, "set_begin_index"):
        return
    original = scheduler.set_timesteps

    # wraps(): pipelines inspect set_timesteps' signature (does it take `sigmas`?), and inspect follows __wrapped__.
    @functools.wraps(original)
    def set_timesteps(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        scheduler.set_begin_index(0)
        return result

    scheduler.set_timesteps = set_timesteps


def cloning_outputs(call: Callable[..., Any]) -> Callable[..., Any]:
    """`call`, with every tensor it returns copied. A CUDA-graph replay returns the graph's own output buffers,
    which the next replay overwrites: without classifier-free guidance a pipeline hands the UNet's output
    straight to its scheduler, and multistep schedulers (PNDM, SD 1.5's default) keep it across steps. A copy of
    a latent-sized tensor per step costs nothing measurable."""
    from torch.utils._pytree import tree_map_only

    def call_and_copy(*args: Any, **kwargs: Any) -> Any:
        return tree_map_only(torch.Tensor, torch.clone, call(*args, **kwargs))

    return call_and_copy


def adopt_cuda_graph_trees() -> None:
    """Set up torch's CUDA-graph trees for the calling thread, which captures and replays the graphs (the engine's
    worker: load, warm-up and generation all run there). torch < 2.13 sets up their per-thread state only in the
    thread that first imported the module (pytorch/pytorch#123177), so a model compiled with CUDA graphs on any
    later thread (a second engine's worker in one process) failed its first replay with a bare AssertionError.
    torch 2.13 sets a thread up lazily in this same way, so there this only does it first."""
    from torch._inductor import cudagraph_trees

    state = cudagraph_trees.local
    if hasattr(state, "tree_manager_containers") or torch._C._is_key_in_tls("tree_manager_containers"):
        return
    state.tree_manager_containers = {}  # one tree manager per device index
    state.tree_manager_locks = defaultdict(threading.Lock)
    # Stashed in torch's own thread-local state too, which autograd's threads inherit, as the module does.
    torch._C._stash_obj_in_tls("tree_manager_containers", state.tree_manager_containers)
    torch._C._stash_obj_in_tls("tree_manager_locks", state.tree_manager_locks)


def _quantize_fp8(module: Any, dtype: str) -> bool:
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_
        from torchao.quantization.quantize_.common import KernelPreference
    except ImportError:
        logger.warning("optimize.fp8 needs torchao >= 0.14 (pip install torchao); not applied")
        return False
    config = Float8DynamicActivationFloat8WeightConfig(
        # Row-wise scales keep more precision, but torchao implements them for bfloat16 weights only.
        granularity=PerRow() if dtype == "bfloat16" else PerTensor(),
        # torch._scaled_mm. The default (AUTO) looks for an optional kernel package on every linear call, which
        # torch.compile up to 2.11 cannot trace: a graph break, an error under fullgraph (pytorch/ao#4279).
        kernel_preference=KernelPreference.TORCH,
        # True would retune inductor for every model this process compiles, not only this one.
        set_inductor_config=False,
    )
    quantize_(module, config)
    return True


def _compile(pipe: DiffusionPipeline, plan: OptimizationPlan, spec: ModelSpec) -> None:
    import torch._dynamo
    import torch._inductor.config

    cache = spec.optimize.compile_cache_dir
    if cache is not None:
        # torch reads these when it first compiles; an operator's own environment wins.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
        os.environ.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))
    torch._inductor.config.fx_graph_cache = True
    # Each served size and batch shape is one compiled variant; the default limit (8) is low for a server.
    # torch 2.6, the oldest that diffusers and accelerate take, knows the limit by its old name only.
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 64))
    if plan.compile:
        denoiser = _denoiser(pipe)
        if spec.family in UNET_FAMILIES:
            # A UNet step is many small kernels: CUDA graphs ("reduce-overhead") remove the launch gaps.
            denoiser.compile(mode="reduce-overhead" if plan.cuda_graphs else None, dynamic=plan.compile_dynamic)
            if plan.cuda_graphs:  # nn.Module.__call__ runs _compiled_call_impl once compile() has set it
                denoiser._compiled_call_impl = cloning_outputs(denoiser._compiled_call_impl)
                adopt_cuda_graph_trees()
        else:
            # A step cache decides per step whether to run the remaining blocks: a deliberate graph break
            # (torch.compiler.disable in diffusers' hooks), so the blocks then compile as several graphs.
            fullgraph = plan.step_cache == "off"
            denoiser.compile_repeated_blocks(fullgraph=fullgraph, dynamic=plan.compile_dynamic)
    if plan.compile_vae:
        pipe.vae.decoder.compile(dynamic=plan.compile_dynamic)
