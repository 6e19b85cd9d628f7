"""Stable Diffusion 3/3.5: two CLIP encoders plus T5, an MMDiT transformer, classifier-free guidance.

Tokens are counted with the T5 tokenizer (the only encoder that sees more than 77 tokens), or CLIP-L when the
model was packaged without T5 (`text_encoder_3 = null`). `max_sequence_length` caps the T5 prompt (pipeline
default 256).

Edits: StableDiffusion3Img2ImgPipeline without a mask, StableDiffusion3InpaintPipeline with one (it puts the
input's latents back outside the mask after every step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from diffusers import (
    DiffusionPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3InpaintPipeline,
    StableDiffusion3Pipeline,
)

from localimg.backends.families import FamilyAdapter, flow_match_steps_run

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class SD3Adapter(FamilyAdapter):
    family: ClassVar[str] = "sd3"
    pipeline_class: ClassVar[type[DiffusionPipeline]] = StableDiffusion3Pipeline
    img2img_class: ClassVar[type[DiffusionPipeline]] = StableDiffusion3Img2ImgPipeline
    inpaint_class: ClassVar[type[DiffusionPipeline]] = StableDiffusion3InpaintPipeline
    takes_max_sequence_length: ClassVar[bool] = True
    steps_run = staticmethod(flow_match_steps_run)

    def prompt_tokenizer(self, pipe: DiffusionPipeline) -> PreTrainedTokenizerBase:
        if getattr(pipe, "tokenizer_3", None) is not None and getattr(pipe, "text_encoder_3", None) is not None:
            return pipe.tokenizer_3
        return pipe.tokenizer
