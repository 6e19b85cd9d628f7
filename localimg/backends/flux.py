"""FLUX.1 (dev, schnell, Kontext, Fill): CLIP-L for the pooled embedding, T5-XXL for the prompt, a
rectified-flow transformer.

FLUX.1 is guidance-distilled: `guidance_scale` is fed to the transformer as an embedding (dev; schnell has none
and ignores it), there is no unconditional pass and so no negative prompt. When a plan carries a negative prompt
we switch on diffusers' "true CFG" (`true_cfg_scale`), which runs the transformer twice per step (twice the
time) and pushes away from the negative prompt; without one, generation is the standard single pass.

Tokens are counted with the T5 tokenizer (`tokenizer_2`): CLIP only sees the first 77 tokens.
`max_sequence_length` caps the T5 prompt (pipeline default 512; schnell is trained at 256).

Edits: FluxImg2ImgPipeline without a mask, FluxInpaintPipeline with one (it keeps the unmasked latents of the
input at every step). Two checkpoint variants, declared with `variant` in models.toml:

- `kontext` (FLUX.1 Kontext): edits are instructions, not img2img. The input is encoded into extra image tokens
  the transformer attends to, and the result is denoised from pure noise, so `strength` does not apply without a
  mask. diffusers' Kontext pipelines take one conditioning image; several input images (up to the model's
  `max_input_images`) are placed side by side into that one image, the way Kontext workflows combine
  references. With a mask, FluxKontextInpaintPipeline repaints the masked region of the first image, conditioned
  on the same combined image. Text-to-image runs the base FLUX pipeline on Kontext's weights.
- `fill` (FLUX.1 Fill): the transformer takes the masked image and the mask as extra input channels, so every job
  runs FluxFillPipeline: an edit without a mask repaints the whole image (at its strength), and text-to-image
  repaints a blank canvas. FluxFillPipeline has no negative prompt: a plan's negative prompt is not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any, ClassVar

from diffusers import (
    DiffusionPipeline,
    FluxFillPipeline,
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxKontextInpaintPipeline,
    FluxPipeline,
)
from PIL import Image

from localimg.backends.families import FamilyAdapter, flow_match_steps_run

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from localimg.backends.base import EditInputs, GenerationPlan

# The true-CFG strength used with a negative prompt; diffusers' examples use 4.0, and the plan's own
# `guidance_scale` already means the distilled guidance, so it cannot double as this.
TRUE_CFG_SCALE = 4.0


class FluxAdapter(FamilyAdapter):
    family: ClassVar[str] = "flux"
    pipeline_class: ClassVar[type[DiffusionPipeline]] = FluxPipeline
    img2img_class: ClassVar[type[DiffusionPipeline]] = FluxImg2ImgPipeline
    inpaint_class: ClassVar[type[DiffusionPipeline]] = FluxInpaintPipeline
    takes_max_sequence_length: ClassVar[bool] = True
    steps_run = staticmethod(flow_match_steps_run)

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


class FluxKontextAdapter(FluxAdapter):
    """Edits condition the transformer on the input images (the first, then the references, side by side) and run
    as an inpainting of the first image: under the edit's mask, or under a full mask when there is none, so that
    `strength` (what `input_fidelity` sets) applies to every edit."""

    img2img_class: ClassVar[type[DiffusionPipeline]] = FluxKontextInpaintPipeline
    inpaint_class: ClassVar[type[DiffusionPipeline]] = FluxKontextInpaintPipeline

    def call_kwargs(self, plans: Sequence[GenerationPlan]) -> dict[str, Any]:
        kwargs = super().call_kwargs(plans)
        first = plans[0]
        if first.edit is not None:
            # By default the Kontext pipelines resize their inputs to a ~1 MP resolution Kontext was trained at, and
            # then paint at that size. Inputs sized here keep the output at the plan's size and the conditioning
            # tokens at the output's count. (`_auto_resize` is in the 0.42 signature and docs.)
            kwargs["max_area"] = first.width * first.height
            kwargs["_auto_resize"] = False
            reference = reference_row(first.edit.images, first.width * first.height)
            kwargs["image_reference"] = [reference] * len(plans)
        return kwargs

    def edit_kwargs(self, edit: EditInputs, count: int, steps: int) -> dict[str, Any]:
        kwargs = super().edit_kwargs(edit, count, steps)
        if edit.mask is None:
            kwargs["mask_image"] = [Image.new("L", edit.images[0].size, 255)] * count
        return kwargs


class FluxFillAdapter(FluxAdapter):
    img2img_class: ClassVar[type[DiffusionPipeline]] = FluxFillPipeline
    inpaint_class: ClassVar[type[DiffusionPipeline]] = FluxFillPipeline

    def pipeline_class_for(self, edit: EditInputs | None) -> type[DiffusionPipeline]:
        return FluxFillPipeline  # the base pipeline cannot feed the Fill transformer's extra input channels

    def call_kwargs(self, plans: Sequence[GenerationPlan]) -> dict[str, Any]:
        kwargs = FamilyAdapter.call_kwargs(self, plans)  # not FluxAdapter's: no true CFG in FluxFillPipeline
        kwargs.pop("negative_prompt", None)
        first, count = plans[0], len(plans)
        if first.edit is None:
            kwargs["image"] = [Image.new("RGB", (first.width, first.height), (128, 128, 128))] * count
            kwargs["strength"] = 1.0
        if first.edit is None or first.edit.mask is None:
            kwargs["mask_image"] = [Image.new("L", (first.width, first.height), 255)] * count
        return kwargs


def reference_row(images: Sequence[Image.Image], pixels: int) -> Image.Image:
    """The images side by side at one height, about `pixels` in all (sides multiples of 16).

    The row's size is worked out before any image is scaled, and each image is scaled once into its slot, so the
    memory this takes is bounded by `pixels` whatever the inputs' shapes (a tall image next to a wide one would
    otherwise make a row thousands of times the output's size).
    """
    aspects = [image.width / image.height for image in images]
    total = sum(aspects)
    height = (pixels / total) ** 0.5
    row_height = max(16, int(height) // 16 * 16)
    row_width = max(16, int(row_height * total) // 16 * 16)  # from the rounded height: each slot keeps its aspect
    edges = [round(row_width * sum(aspects[:i]) / total) for i in range(len(images) + 1)]
    row = Image.new("RGB", (row_width, row_height))
    for image, (left, right) in zip(images, pairwise(edges), strict=True):
        slot = (max(1, right - left), row_height)
        row.paste(image.convert("RGB").resize(slot, Image.Resampling.LANCZOS), (left, 0))
    return row


def flux_variant_adapter(variant: str) -> FamilyAdapter:
    """The adapter for a FLUX checkpoint variant other than "base" ("kontext", "fill")."""
    adapters: dict[str, type[FamilyAdapter]] = {"kontext": FluxKontextAdapter, "fill": FluxFillAdapter}
    if variant not in adapters:
        raise ValueError(f"no FLUX variant {variant!r}; known: base, {', '.join(adapters)}")
    return adapters[variant]()
