"""What differs between model families: the pipeline class, the call arguments, the prompt tokenizer.

Each family's file (`flux.py`, `sd15.py`, `sdxl.py`, `sd3.py`) subclasses `FamilyAdapter` and keeps its quirks
there; `DiffusersBackend` is the same for every family.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from transformers import PreTrainedTokenizerBase

    from localimg.backends.base import GenerationPlan


class FamilyAdapter:
    """The defaults fit Stable Diffusion-style pipelines (CLIP tokenizer, classifier-free guidance)."""

    family: ClassVar[str]
    pipeline_class: ClassVar[type[DiffusionPipeline]]
    takes_max_sequence_length: ClassVar[bool] = False  # T5-based families cap their prompt

    def call_kwargs(self, plans: Sequence[GenerationPlan]) -> dict[str, Any]:
        """The pipeline `__call__` arguments for one image per entry of `plans` (a plan appears once per image it
        contributes; all share one `batch_key`). The backend adds the generators."""
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
        return kwargs

    def prompt_tokenizer(self, pipe: DiffusionPipeline) -> PreTrainedTokenizerBase:
        """The tokenizer whose count is reported as the prompt's length."""
        return pipe.tokenizer

    def prepare(self, pipe: DiffusionPipeline, dtype: str) -> None:
        """Family fixes applied once after loading, with the pipeline in `dtype` on its device."""

    def unpack_latents(self, pipe: DiffusionPipeline, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """The pipeline's working latents as the VAE's (batch, channels, h, w) layout, for previews."""
        return latents


def adapter_for(family: str) -> FamilyAdapter:
    """The adapter for a registry family name ("flux", "sd15", "sdxl", "sd3")."""
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
