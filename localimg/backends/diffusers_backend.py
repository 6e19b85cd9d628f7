"""`DiffusersBackend`: one model of any family on one device, run through its diffusers pipeline."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from localimg.backends.base import StepProgress
from localimg.backends.device import (
    choose_dtype,
    cuda_capability,
    device_failure,
    is_out_of_memory,
    raise_unless_out_of_memory,
    release_memory,
    torch_device,
    torch_dtype,
)
from localimg.backends.families import adapter_for
from localimg.backends.loading import load_pipeline
from localimg.backends.optimizations import optimize_pipeline, warm_up_pipeline
from localimg.backends.previews import DenoisingTap, decode_preview
from localimg.backends.step_cache import step_cache_scope
from localimg.errors import OUT_OF_MEMORY, DeviceFailedError, GenerationError, ModelUnavailableError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from diffusers import DiffusionPipeline
    from PIL import Image

    from localimg.backends.base import DeviceInfo, GenerationPlan, StepCallback
    from localimg.backends.optimizations import OptimizationPlan
    from localimg.registry import ModelSpec

logger = logging.getLogger(__name__)


class DiffusersBackend:
    """An `ImageBackend` for every family in the registry; family differences live in `FamilyAdapter`s.

    Not thread-safe: the engine runs one job at a time per backend.
    """

    def __init__(self, spec: ModelSpec, device: DeviceInfo) -> None:
        self.spec = spec
        self.device = device
        self.adapter = adapter_for(spec.family, spec.variant)
        self.dtype = choose_dtype(device.kind, spec.family, cuda_capability(device), spec.dtype.get(device.kind))
        self._pipe: DiffusionPipeline | None = None
        self.optimizations: OptimizationPlan | None = None  # what optimize_pipeline applied, once loaded
        self.load_phases: dict[str, float] = {}  # seconds per phase of the last load (read, to_device, ...)
        # Edit pipelines built from `_pipe` with `from_pipe`: they share its components, so cost no weights.
        self._derived: dict[type[DiffusionPipeline], DiffusionPipeline] = {}
        self._tiled = False

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def load(self) -> None:
        """Load the weights onto the device, optimize and warm up (a no-op when loaded). Any failure leaves
        nothing loaded and raises ModelUnavailableError (code OUT_OF_MEMORY when the model did not fit), or
        DeviceFailedError when the device itself failed."""
        if self._pipe is not None:
            return
        try:
            self._load()
            return
        except DeviceFailedError:  # from the warm-up's generate; nothing can be freed on a failed device
            raise
        except ModelUnavailableError as exc:
            failure = exc
        except Exception as exc:  # noqa: BLE001 - a compile, fp8 or warm-up failure: the model cannot be served
            lost = device_failure(self.device, exc)
            if lost is not None:
                raise lost from exc
            logger.error("model %s failed while being prepared", self.spec.name, exc_info=exc)
            out_of_memory = is_out_of_memory(exc) or getattr(exc, "code", None) == OUT_OF_MEMORY
            failure = ModelUnavailableError(
                f"model {self.spec.name!r} failed while being prepared on {self.device.name}: "
                f"{type(exc).__name__}: {exc}",
                code=OUT_OF_MEMORY if out_of_memory else "model_load_failed",
            )
        # Out of the except block, so that no traceback keeps the half-loaded pipeline's tensors alive: a caller
        # may free other models and try again, and that needs this memory back first.
        self.unload()
        raise failure

    def _load(self) -> None:
        clock = _PhaseClock()
        pipe = load_pipeline(self.spec, self.adapter.pipeline_class, torch_dtype(self.dtype))
        clock.lap("read")
        fits = True
        try:
            pipe.to(torch_device(self.device))
        except torch.cuda.OutOfMemoryError:
            fits = False
        if not fits:
            del pipe
            raise ModelUnavailableError(
                f"model {self.spec.name!r} does not fit in the memory of {self.device.name} in {self.dtype}",
                code=OUT_OF_MEMORY,
            )
        if self.device.kind != "cpu":
            release_memory(self.device)  # the host copy the weights were loaded into
        clock.lap("to_device")
        self.adapter.prepare(pipe, self.dtype)
        pipe.set_progress_bar_config(disable=True)
        self.optimizations = optimize_pipeline(pipe, self.spec, self.device, self.dtype)
        self._pipe = pipe
        clock.lap("optimize")
        warm_up_pipeline(self.generate, self.spec, self.optimizations)
        clock.lap("warm_up")
        self.load_phases = clock.phases
        logger.info(
            "model %s ready on %s (%s, %s) in %.1f s: %s", self.spec.name, self.device.name, self.device.kind,
            self.dtype, sum(clock.phases.values()), ", ".join(f"{k} {v:.1f} s" for k, v in clock.phases.items()),
        )  # fmt: skip

    def generate(self, batch: Sequence[GenerationPlan], on_step: StepCallback | None = None) -> list[Image.Image]:
        """Run plans sharing one `batch_key` in pipeline calls of at most `spec.max_batch` images, halving the
        images per call on out-of-memory. Returns the images flat, in plan order then seed order.

        An exception raised by `on_step` aborts the job and propagates.
        """
        pipe = self._pipeline_for(batch[0])
        # One entry per image: the plan it belongs to and its seed, so a call can mix requests.
        items = [(plan, seed) for plan in batch for seed in plan.seeds]
        chunk = max(1, min(self.spec.max_batch, len(items)))
        images: list[Image.Image] = []
        while len(images) < len(items):
            start = len(images)
            try:
                images.extend(self._call(pipe, items[start : start + chunk], start, on_step))
            except Exception as exc:
                raise_unless_out_of_memory(self.device, exc)
                detail = str(exc)
            else:
                continue
            # Handled outside the except block: the traceback pins the failed call's tensors until it is gone.
            release_memory(self.device)
            if chunk > 1:
                chunk //= 2
                logger.warning("%s: out of memory; retrying %d image(s) per call", self.spec.name, chunk)
            elif not self._tiled:
                logger.warning("%s: out of memory; enabling VAE tiling and slicing", self.spec.name)
                pipe.vae.enable_tiling()
                pipe.vae.enable_slicing()
                self._tiled = True
            else:
                plan = batch[0]
                logger.error("%s: out of memory at one image with a tiled VAE: %s", self.spec.name, detail)
                raise GenerationError(
                    f"out of memory generating a {plan.width}x{plan.height} image with {self.spec.name} on "
                    f"{self.device.name}; try a smaller size",
                    code=OUT_OF_MEMORY,
                )
        return images

    def count_tokens(self, text: str) -> int:
        """Prompt length in the family's primary tokenizer, special tokens excluded, never truncated."""
        tokenizer = self.adapter.prompt_tokenizer(self._require_pipe())
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def unload(self) -> None:
        """Drop the pipeline and give its memory back to the device."""
        self._pipe = None
        self._derived.clear()
        self._tiled = False
        self.optimizations = None
        release_memory(self.device)

    def memory_bytes(self) -> int:
        """Bytes of parameters and buffers the loaded pipeline holds (the engine's memory budget counts these)."""
        return 0 if self._pipe is None else pipeline_bytes(self._pipe)

    def _call(
        self,
        pipe: DiffusionPipeline,
        items: list[tuple[GenerationPlan, int]],
        first: int,
        on_step: StepCallback | None,
    ) -> list[Image.Image]:
        plans = [plan for plan, _ in items]
        width, height = plans[0].width, plans[0].height
        indexes = range(first, first + len(items))

        tap = DenoisingTap(pipe.scheduler)

        def preview() -> list[Image.Image]:
            return decode_preview(pipe, self.adapter, tap.clean_latents(), width, height)

        def callback(pipe: DiffusionPipeline, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                # num_timesteps, not plan.steps: some schedulers (PNDM) take one step more than asked.
                on_step(StepProgress(step + 1, pipe.num_timesteps, indexes, preview))
            return tensors

        with torch.inference_mode(), tap.attached(), self._step_cache_scope(pipe):
            output = pipe(
                **self.adapter.call_kwargs(plans),
                generator=self._generators([seed for _, seed in items]),
                output_type="pil",
                callback_on_step_end=callback,
            )
        images = [image if image.mode == "RGB" else image.convert("RGB") for image in output.images]
        for image in images:
            # Loading checked that the checkpoint makes every size its limits admit (backends/checkpoint.py).
            if image.size != (width, height):
                raise GenerationError(f"{self.spec.name} produced {image.width}x{image.height} for a {width}x{height} "
                                      "request", code="invalid_size")  # fmt: skip
        return images

    def _step_cache_scope(self, pipe: DiffusionPipeline) -> AbstractContextManager[None]:
        if self.optimizations is None or self.optimizations.step_cache == "off":
            return nullcontext()
        return step_cache_scope(pipe.transformer)  # step caches exist for the transformer families only

    def _generators(self, seeds: list[int]) -> list[torch.Generator]:
        # One generator per image, so image i depends on seeds[i] only, whatever the batch. CUDA generators live
        # on the GPU (noise is drawn there); on MPS/CPU they live on the CPU, as diffusers draws MPS noise on the
        # CPU anyway. We promise reproducibility on one machine and software stack, not across devices.
        where = torch_device(self.device) if self.device.kind == "cuda" else torch.device("cpu")
        return [torch.Generator(device=where).manual_seed(seed) for seed in seeds]

    def _pipeline_for(self, plan: GenerationPlan) -> DiffusionPipeline:
        """The loaded pipeline, or the family's edit pipeline sharing its components."""
        pipe = self._require_pipe()
        cls = self.adapter.pipeline_class_for(plan.edit)
        if cls is self.adapter.pipeline_class:
            return pipe
        if cls not in self._derived:
            derived = cls.from_pipe(pipe)
            derived.set_progress_bar_config(disable=True)
            self._derived[cls] = derived
        return self._derived[cls]

    def _require_pipe(self) -> DiffusionPipeline:
        if self._pipe is None:
            raise ModelUnavailableError(f"model {self.spec.name!r} is not loaded", code="model_not_loaded")
        return self._pipe


class _PhaseClock:
    """Seconds spent in consecutive phases."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = now - self._last
        self._last = now


def pipeline_bytes(pipe: DiffusionPipeline) -> int:
    """Bytes of the parameters and buffers of a pipeline's components."""
    modules = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors)
