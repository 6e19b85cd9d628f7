"""Stable Diffusion XL (base): two CLIP text encoders, UNet, classifier-free guidance with a negative prompt.

The same prompt feeds both text encoders (`prompt_2` defaults to it); tokens are counted with the first (CLIP-L)
tokenizer, which both share. The refiner stage is not used.

Edits: StableDiffusionXLImg2ImgPipeline without a mask, StableDiffusionXLInpaintPipeline with one (with the base
4-channel UNet it puts the input's latents back outside the mask after every step).
"""

from __future__ import annotations

from typing import ClassVar

from diffusers import (
    DiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from localimg.backends.device import vae_dtype
from localimg.backends.families import FamilyAdapter


class SDXLAdapter(FamilyAdapter):
    family: ClassVar[str] = "sdxl"
    pipeline_class: ClassVar[type[DiffusionPipeline]] = StableDiffusionXLPipeline
    img2img_class: ClassVar[type[DiffusionPipeline]] = StableDiffusionXLImg2ImgPipeline
    inpaint_class: ClassVar[type[DiffusionPipeline]] = StableDiffusionXLInpaintPipeline
    img2img_takes_size: ClassVar[bool] = False

    def prepare(self, pipe: DiffusionPipeline, dtype: str) -> None:
        # The pipeline upcasts the VAE around each decode when force_upcast is set (see device.vae_dtype). Set it
        # even if the VAE's config says otherwise (fp16-fixed VAEs): a little slower, never a black image.
        if vae_dtype(self.family, dtype) != dtype:
            pipe.vae.register_to_config(force_upcast=True)
