"""What differs between model families: the pipeline classes, the call arguments, the prompt tokenizer.

Each family's file (`flux.py`, `sd15.py`, `sdxl.py`, `sd3.py`) subclasses `FamilyAdapter` and keeps its quirks
there; `DiffusersBackend` is the same for every family.

Edits run the family's image-to-image pipeline (no mask) or inpainting pipeline (a mask), built from the loaded
pipeline with `from_pipe`, so they share its weights. Those pipelines denoise only the last `strength` part of
the schedule: they take `num_inference_steps` and run about `num_inference_steps * strength` of them. We pass
the schedule length nearest `steps / strength` whose call runs exactly the plan's `steps` (`schedule_length`),
so a quality preset costs the same for an edit as for a generation; a strength so low that even a 1000-step
schedule runs fewer steps runs those (at least one, never 0: strength is clamped to >= 1/1000).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from transformers import PreTrainedTokenizerBase

    from localimg.backends.base import EditInputs, GenerationPlan

# The longest schedule we ask for: the schedulers' training timestep count (SD's discrete schedulers cannot take
# more). With it, a strength of 1/1000 still runs one step.
MAX_SCHEDULE = 1000
MIN_STRENGTH = 1 / MAX_SCHEDULE  # the pipelines fail on a call that runs no step, so strength 0 runs one tiny step


class FamilyAdapter:
    """The defaults fit Stable Diffusion-style pipelines (CLIP tokenizer, classifier-free guidance)."""

    family: ClassVar[str]
    pipeline_class: ClassVar[type[DiffusionPipeline]]
    img2img_class: ClassVar[type[DiffusionPipeline]]
    inpaint_class: ClassVar[type[DiffusionPipeline]]
    takes_max_sequence_length: ClassVar[bool] = False  # T5-based families cap their prompt
    img2img_takes_size: ClassVar[bool] = True  # False for SD1.5 and SDXL, whose img2img sizes its output as the image

    def pipeline_class_for(self, edit: EditInputs | None) -> type[DiffusionPipeline]:
        """The pipeline class that runs a plan with this `edit` (None: text-to-image, the loaded class)."""
        if edit is None:
            return self.pipeline_class
        return self.img2img_class if edit.mask is None else self.inpaint_class

    def call_kwargs(self, plans: Sequence[GenerationPlan]) -> dict[str, Any]:
        """The pipeline `__call__` arguments for one image per entry of `plans` (a plan appears once per image it
        contributes; all share one `batch_key`, so at most one `EditInputs`). The backend adds the generators."""
        first = plans[0]
        kwargs: dict[str, Any] = {
            "prompt": [plan.prompt for plan in plans],
            "height": first.height,
            "width": first.width,
            "num_inference_steps": first.steps,
            "guidance_scale": first.guidance_scale,
            "num_images_per_prompt": 1,
        }
        if first.negative_prompt is not None:
            kwargs["negative_prompt"] = [plan.negative_prompt or "" for plan in plans]
        if first.max_sequence_length is not None and self.takes_max_sequence_length:
            kwargs["max_sequence_length"] = first.max_sequence_length
        if first.edit is not None:
            kwargs.update(self.edit_kwargs(first.edit, len(plans), first.steps))
            if first.edit.mask is None and not self.img2img_takes_size:
                del kwargs["height"], kwargs["width"]
        return kwargs

    def edit_kwargs(self, edit: EditInputs, count: int, steps: int) -> dict[str, Any]:
        """The arguments an edit adds for `count` images: the input (and mask) once per image, so that each
        image's generator also draws its own VAE sample, and the strength with its schedule length."""
        strength = edit_strength(edit)
        kwargs: dict[str, Any] = {
            "image": [edit.images[0]] * count,
            "strength": strength,
            "num_inference_steps": schedule_length(steps, strength, self.steps_run),
        }
        if edit.mask is not None:
            kwargs["mask_image"] = [edit.mask] * count
        return kwargs

    @staticmethod
    def steps_run(num_inference_steps: int, strength: float) -> int:
        """How many steps an img2img/inpaint call runs (the pipelines' `get_timesteps`, SD's integer form)."""
        return min(int(num_inference_steps * strength), num_inference_steps)

    def prompt_tokenizer(self, pipe: DiffusionPipeline) -> PreTrainedTokenizerBase:
        """The tokenizer whose count is reported as the prompt's length."""
        return pipe.tokenizer

    def prepare(self, pipe: DiffusionPipeline, dtype: str) -> None:
        """Family fixes applied once after loading, with the pipeline in `dtype` on its device."""

    def unpack_latents(self, pipe: DiffusionPipeline, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """The pipeline's working latents as the VAE's (batch, channels, h, w) layout, for previews."""
        return latents


def flow_match_steps_run(num_inference_steps: int, strength: float) -> int:
    """`FamilyAdapter.steps_run` for the flow-matching pipelines (FLUX, SD3), which round the other way."""
    return num_inference_steps - int(max(num_inference_steps - num_inference_steps * strength, 0))


def edit_strength(edit: EditInputs) -> float:
    """The edit's strength, clamped to what the pipelines can run."""
    return min(1.0, max(MIN_STRENGTH, edit.strength))


def schedule_length(steps: int, strength: float, steps_run: Callable[[int, float], int]) -> int:
    """The `num_inference_steps` whose img2img/inpaint call runs exactly `steps` steps at `strength`, nearest to
    `steps / strength` (where the pipelines' own rounding starts closest to `strength`). When none up to
    `MAX_SCHEDULE` does (a tiny strength), `MAX_SCHEDULE`, which runs fewer steps but at least one."""
    ideal = steps / strength
    exact = [length for length in range(steps, MAX_SCHEDULE + 1) if steps_run(length, strength) == steps]
    return min(exact, key=lambda length: abs(length - ideal)) if exact else MAX_SCHEDULE


def adapter_for(family: str, variant: str = "base") -> FamilyAdapter:
    """The adapter for a registry family name ("flux", "sd15", "sdxl", "sd3") and checkpoint variant."""
    if variant != "base":
        from localimg.backends.flux import flux_variant_adapter

        if family != "flux":
            raise ValueError(f"no {variant!r} variant for model family {family!r}")
        return flux_variant_adapter(variant)
    from localimg.backends.flux import FluxAdapter
    from localimg.backends.sd3 import SD3Adapter
    from localimg.backends.sd15 import SD15Adapter
    from localimg.backends.sdxl import SDXLAdapter

    adapters: dict[str, type[FamilyAdapter]] = {
        "flux": FluxAdapter,
        "sd15": SD15Adapter,
        "sdxl": SDXLAdapter,
        "sd3": SD3Adapter,
    }
    if family not in adapters:
        raise ValueError(f"no backend for model family {family!r}; known: {', '.join(adapters)}")
    return adapters[family]()
