"""FLUX.1 (dev, schnell): CLIP-L for the pooled embedding, T5-XXL for the prompt, a rectified-flow transformer.

FLUX.1 is guidance-distilled: `guidance_scale` is fed to the transformer as an embedding (dev; schnell has none
and ignores it), there is no unconditional pass and so no negative prompt. When a plan carries a negative prompt
we switch on diffusers' "true CFG" (`true_cfg_scale`), which runs the transformer twice per step (twice the
time) and pushes away from the negative prompt; without one, generation is the standard single pass.

Tokens are counted with the T5 tokenizer (`tokenizer_2`): CLIP only sees the first 77 tokens.
`max_sequence_length` caps the T5 prompt (pipeline default 512; schnell is trained at 256).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from diffusers import DiffusionPipeline, FluxPipeline

from localimg.backends.families import FamilyAdapter

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from localimg.backends.base import GenerationPlan

# The true-CFG strength used with a negative prompt; diffusers' examples use 4.0, and the plan's own
# `guidance_scale` already means the distilled guidance, so it cannot double as this.
TRUE_CFG_SCALE = 4.0


class FluxAdapter(FamilyAdapter):
    family: ClassVar[str] = "flux"
    pipeline_class: ClassVar[type[DiffusionPipeline]] = FluxPipeline
    takes_max_sequence_length: ClassVar[bool] = True

    def call_kwargs(self, plans: Sequence[GenerationPlan]) -> dict[str, Any]:
        kwargs = super().call_kwargs(plans)
        if "negative_prompt" in kwargs:
            kwargs["true_cfg_scale"] = TRUE_CFG_SCALE
        return kwargs

    def prompt_tokenizer(self, pipe: DiffusionPipeline) -> PreTrainedTokenizerBase:
        return pipe.tokenizer_2

    def unpack_latents(self, pipe: DiffusionPipeline, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        # FLUX denoises 2x2 patches packed into a token sequence.
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
