"""Stable Diffusion 1.x/2.x: CLIP text encoder, UNet, classifier-free guidance with a negative prompt.

A model folder that ships a safety checker keeps it (diffusers blacks out flagged images); it is part of the
model as its publisher packaged it. Remove `safety_checker` from model_index.json to serve without one.

Edits: StableDiffusionImg2ImgPipeline without a mask, StableDiffusionInpaintPipeline with one. The inpainting
pipeline takes either UNet: a 9-channel inpainting UNet (sd-v1-5-inpainting) sees the mask and the masked image;
a base 4-channel UNet denoises everything and the pipeline puts the input's latents back outside the mask after
every step.
"""

from __future__ import annotations

from typing import ClassVar

from diffusers import (
    DiffusionPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from localimg.backends.families import FamilyAdapter


class SD15Adapter(FamilyAdapter):
    family: ClassVar[str] = "sd15"
    pipeline_class: ClassVar[type[DiffusionPipeline]] = StableDiffusionPipeline
    img2img_class: ClassVar[type[DiffusionPipeline]] = StableDiffusionImg2ImgPipeline
    inpaint_class: ClassVar[type[DiffusionPipeline]] = StableDiffusionInpaintPipeline
    img2img_takes_size: ClassVar[bool] = False
