"""Stable Diffusion 1.x/2.x: CLIP text encoder, UNet, classifier-free guidance with a negative prompt.

A model folder that ships a safety checker keeps it (diffusers blacks out flagged images); it is part of the
model as its publisher packaged it. Remove `safety_checker` from model_index.json to serve without one.
"""

from __future__ import annotations

from typing import ClassVar

from diffusers import DiffusionPipeline, StableDiffusionPipeline

from localimg.backends.families import FamilyAdapter


class SD15Adapter(FamilyAdapter):
    family: ClassVar[str] = "sd15"
    pipeline_class: ClassVar[type[DiffusionPipeline]] = StableDiffusionPipeline
