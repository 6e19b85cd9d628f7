"""What a diffusers folder's config files (and a single file's tensor names) say about the checkpoint, checked
against its models.toml table before any weight is read: which pipeline it is, and which image sizes it can make.

diffusers only warns while loading another pipeline's components, and a size the checkpoint cannot make fails
inside the pipeline; either way every request would fail one by one. Refused here, the model is unavailable with
the setting to change, and `localimg models` reports it. File reads only: no torch.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from localimg.errors import ModelUnavailableError

if TYPE_CHECKING:
    from localimg.registry import ModelSpec

# The pipeline classes (model_index.json's `_class_name`) of each family, most specific prefix first.
_FAMILY_OF_CLASS = (("StableDiffusion3", "sd3"), ("StableDiffusionXL", "sdxl"), ("StableDiffusion", "sd15"),
                    ("Flux", "flux"))  # fmt: skip
# Tensor names that only some families' single files hold, after the `model.diffusion_model.` prefix of the LDM and
# ComfyUI layouts: the original layouts' names, and diffusers' own for a transformer saved alone.
_FAMILIES_OF_TENSORS = (
    ("conditioner.embedders.", frozenset({"sdxl"})),  # SDXL's text encoders (LDM layout)
    ("cond_stage_model.", frozenset({"sd15"})),  # SD 1.x / 2.x's text encoder (LDM layout)
    ("input_blocks.", frozenset({"sd15", "sdxl"})),  # an LDM UNet
    ("double_blocks.", frozenset({"flux"})),  # Black Forest Labs' layout
    ("single_transformer_blocks.", frozenset({"flux"})),  # diffusers' FluxTransformer2DModel
    ("joint_blocks.", frozenset({"sd3"})),  # Stability's MMDiT layout
    ("pos_embed.proj.", frozenset({"sd3"})),  # diffusers' SD3Transformer2DModel
)
_LDM_PREFIX = "model.diffusion_model."
# The guidance embedding of a guidance-distilled FLUX transformer (FLUX.1 dev, Kontext, Fill; not schnell), in Black
# Forest Labs' layout and in diffusers'. The config's `guidance_embeds` must agree. Otherwise diffusers loads
# flux1-dev.safetensors with schnell's configs after a warning, dropping the guidance (dev's weights run as schnell:
# poor images), leaves the embedding on the meta device the other way round, and fails on a file in its own layout
# with an IndexError from the converter it then tries.
_FLUX_GUIDANCE = ("guidance_in.", "time_text_embed.guidance_embedder.")
# FLUX checkpoints that need inputs localimg does not send (control images, image embeddings).
_UNSERVED_FLUX = ("FluxControl", "FluxPriorRedux")
# What every size reaching a pipeline is a multiple of, whatever the limits say (the API's own rule).
API_MULTIPLE = 16


def check_checkpoint(spec: ModelSpec, folder: Path, *, single_file: bool = False) -> None:
    """Raise ModelUnavailableError when the folder is not the kind of checkpoint `spec` declares, or cannot make
    every size `spec.limits` admits. `single_file`: the folder only configures a single-file checkpoint, whose
    weights may be another variant's of the same architecture (FLUX.1 Kontext's file with FLUX.1 dev's configs)."""
    _check_kind(spec, folder, single_file)
    _check_sizes(spec, size_rule(spec.family, folder))


def check_file_kind(spec: ModelSpec, file: Path, tensors: frozenset[str], config: Path) -> None:
    """Raise ModelUnavailableError when a single file's tensor names are another family's than `spec` declares, or
    name another FLUX.1 transformer than the `config` folder configures (dev's for schnell's or the reverse). Only
    names no other family uses count: a file they say nothing about is left to load."""
    found = _families_named(tensors)
    if found is None:
        return
    families, example = found
    if spec.family not in families:
        _refuse(
            f"model {spec.name!r}: {file} holds a checkpoint of family {' or '.join(sorted(families))} (tensors such "
            f"as {example!r}) but models.toml declares family = {spec.family!r}; fix the family or source.file."
        )
    if families == {"flux"}:
        _check_flux_guidance(spec, file, tensors, config)


def _check_flux_guidance(spec: ModelSpec, file: Path, tensors: frozenset[str], config: Path) -> None:
    transformer_config = config / "transformer" / "config.json"
    transformer = read_json(transformer_config)
    if not transformer:
        return  # the component check names the missing config
    configured = bool(transformer.get("guidance_embeds", False))  # FluxTransformer2DModel's default
    guidance = min(
        (name for name in tensors if name.removeprefix(_LDM_PREFIX).startswith(_FLUX_GUIDANCE)), default=None
    )
    if (guidance is not None) == configured:
        return
    where = f"model {spec.name!r}: {file} holds"
    configs = f"{transformer_config} has guidance_embeds = {str(configured).lower()}"
    if guidance is not None:
        _refuse(
            f"{where} a guidance-distilled FLUX.1 transformer (dev, Kontext or Fill: tensors such as {guidance!r}) "
            f"but {configs} (FLUX.1 schnell's); set source.config to the configs of the file's model "
            "(black-forest-labs/FLUX.1-dev for flux1-dev.safetensors)."
        )
    _refuse(
        f"{where} a FLUX.1 transformer without a guidance embedding (schnell's) but {configs} (FLUX.1 dev's); set "
        "source.config to black-forest-labs/FLUX.1-schnell's configs."
    )


# Per file header (the same frozenset each time its file is unchanged): GET /v1/models checks every model's files.
@functools.lru_cache(maxsize=64)
def _families_named(tensors: frozenset[str]) -> tuple[frozenset[str], str] | None:
    """The families the tensor names point to, and one such name; None when they say nothing or disagree."""
    evidence: dict[str, tuple[str, frozenset[str]]] = {}  # marker -> (a tensor's name, the families it points to)
    for name in sorted(tensors):
        for marker, families in _FAMILIES_OF_TENSORS:
            if name.removeprefix(_LDM_PREFIX).startswith(marker):
                evidence.setdefault(marker, (name, families))
    families = frozenset.intersection(*(families for _, families in evidence.values())) if evidence else frozenset()
    return (families, min(name for name, _ in evidence.values())) if families else None


def absent_components(folder: Path) -> list[str]:
    """Components model_index.json lists as `[null, null]`: saved without them (SD3 without T5)."""
    index = read_json(folder / "model_index.json")
    return [name for name, value in index.items() if isinstance(value, list) and value and value[0] is None]


@dataclass(frozen=True)
class SizeRule:
    """Sides a checkpoint can make: multiples of `multiple`, at most `max_side` (None: no bound of its own).
    `why` says where they come from, for the operator."""

    multiple: int
    why: str
    max_side: int | None = None


def size_rule(family: str, folder: Path) -> SizeRule | None:
    """The sizes the checkpoint in `folder` can make, from its configs (None when they do not say).

    The VAE halves the resolution at each block after the first (diffusers' `vae_scale_factor`); FLUX packs 2x2
    latent pixels into one token, SD3 patches them, and SD3's position embedding covers a bounded grid.
    """
    vae = read_json(folder / "vae" / "config.json")
    if not vae:
        return None
    scale = 2 ** (len(vae.get("block_out_channels", [64])) - 1)
    if family == "flux":
        return SizeRule(2 * scale, f"FLUX packs 2x2 latent pixels of a VAE scaling by {scale}")
    if family == "sd3":
        transformer = read_json(folder / "transformer" / "config.json")
        patch = int(transformer.get("patch_size") or 2)
        positions = int(transformer.get("pos_embed_max_size") or 96)  # SD3Transformer2DModel's defaults
        why = f"SD3 patches {patch}x{patch} latent pixels of a VAE scaling by {scale}, over {positions} positions"
        return SizeRule(patch * scale, why, max_side=positions * patch * scale)
    return SizeRule(scale, f"its VAE scales by {scale}")


def read_json(path: Path) -> dict[str, Any]:
    """A config file's object; {} when it is missing or unreadable (loading then reports the real problem)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _check_kind(spec: ModelSpec, folder: Path, single_file: bool) -> None:
    class_name = str(read_json(folder / "model_index.json").get("_class_name") or "pipeline of unnamed class")
    family = next((family for prefix, family in _FAMILY_OF_CLASS if class_name.startswith(prefix)), None)
    where = f"model {spec.name!r}: {folder} holds a {class_name}"
    if family is not None and family != spec.family:
        _refuse(
            f"{where} (a {family} model) but models.toml declares family = {spec.family!r}; set family = {family!r}."
        )
    if spec.family == "flux":
        if class_name.startswith(_UNSERVED_FLUX):
            _refuse(f"{where}, which needs inputs localimg does not send; serve a base, Kontext or Fill checkpoint.")
        transformer = read_json(folder / "transformer" / "config.json")
        channels_in = transformer.get("in_channels") or 64  # FluxTransformer2DModel's defaults
        channels_out = transformer.get("out_channels") or channels_in
        # FLUX.1 Fill's transformer takes the image and mask latents beside the noise: more channels in than out.
        fill = class_name.startswith("FluxFill") or channels_in != channels_out
        if fill != (spec.variant == "fill"):
            hint = 'set variant = "fill"' if fill else 'remove variant = "fill"'
            _refuse(f"{where} whose transformer {'is' if fill else 'is not'} FLUX.1 Fill's; {hint}.")
        # Kontext's transformer is the base one's shape: only the pipeline class tells them apart.
        kontext = class_name.startswith("FluxKontext")
        if not fill and not single_file and kontext != (spec.variant == "kontext"):
            if kontext:
                _refuse(f"{where} (FLUX.1 Kontext) but models.toml declares variant = {spec.variant!r}; set 'kontext'.")
            _refuse(f"{where}, not FLUX.1 Kontext, but models.toml declares variant = 'kontext'; remove it.")
    if spec.family in ("sd15", "sdxl") and read_json(folder / "unet" / "config.json").get("in_channels", 4) != 4:
        _refuse(
            f"{where} whose UNet takes extra input channels (an inpainting, pix2pix or depth checkpoint); localimg "
            "serves the base checkpoints, which inpaint through the family's inpainting pipeline."
        )


def _check_sizes(spec: ModelSpec, rule: SizeRule | None) -> None:
    if rule is None:
        return
    limits = spec.limits
    served = math.lcm(API_MULTIPLE, limits.multiple_of)  # what every size reaching the pipeline is a multiple of
    if served % rule.multiple:
        _refuse(
            f"model {spec.name!r}: this checkpoint makes sides that are multiples of {rule.multiple} ({rule.why}), "
            f"but models.toml has limits.multiple_of = {limits.multiple_of}; set it to a multiple of {rule.multiple}.",
            code="model_limits_mismatch",
        )
    if rule.max_side is not None and limits.max_side > rule.max_side:
        _refuse(
            f"model {spec.name!r}: this checkpoint makes images at most {rule.max_side} pixels a side ({rule.why}), "
            f"but models.toml has limits.max_side = {limits.max_side}; set limits.max_side (and default_size) "
            f"within {rule.max_side}.",
            code="model_limits_mismatch",
        )


def _refuse(message: str, code: str = "model_kind_mismatch") -> NoReturn:
    raise ModelUnavailableError(message, code=code)
