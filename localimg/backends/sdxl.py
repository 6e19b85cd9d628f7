"""Stable Diffusion XL (base): two CLIP text encoders, UNet, classifier-free guidance with a negative prompt.

The same prompt feeds both text encoders (`prompt_2` defaults to it); tokens are counted with the first (CLIP-L)
tokenizer, which both share. The refiner stage is not used.
"""

from __future__ import annotations

from typing import ClassVar

from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

from localimg.backends.device import vae_dtype
from localimg.backends.families import FamilyAdapter


class SDXLAdapter(FamilyAdapter):
    family: ClassVar[str] = "sdxl"
    pipeline_class: ClassVar[type[DiffusionPipeline]] = StableDiffusionXLPipeline

    def prepare(self, pipe: DiffusionPipeline, dtype: str) -> None:
        # The pipeline upcasts the VAE around each decode when force_upcast is set (see device.vae_dtype). Set it
        # even if the VAE's config says otherwise (fp16-fixed VAEs): a little slower, never a black image.
        if vae_dtype(self.family, dtype) != dtype:
            pipe.vae.register_to_config(force_upcast=True)
