"""Tiny random-weight diffusers pipelines for tests: real folder layouts, real pipeline classes, no hub.

`build_tiny_models(out_dir)` writes `tiny-flux`, `tiny-sd15`, `tiny-sdxl`, `tiny-sd3`, `tiny-flux-kontext` (FLUX's
architecture, declared as a Kontext checkpoint taking up to 16 input images) and `tiny-flux-fill` (a FLUX.1 Fill
transformer) under `out_dir` as
ordinary diffusers folders (safetensors only) plus a `models.toml` registering them, and returns that file's
path. Every component is built locally from fixed seeds, tokenizers included (trained here on a small
built-in corpus), so the build needs no network. The denoisers and text encoders keep random weights; the VAEs
get a few seconds of autoencoder training (tiny_vae.py) so that an input image survives encode -> decode and
image-to-image strength has a visible effect. Shapes follow the real families (8x VAE downsampling,
2x2 transformer patches, CLIP's 77-token window, the real VAE scaling factors) while channels, layers and
heads are cut down so a 1024x1024 image takes a fraction of a second on a CPU.

The build is idempotent: `out_dir/.complete` is written last and holds the build version, and a build
whose marker matches returns at once. Each folder is built under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localimg.testing.tiny_tokenizers import CLIP_MAX_LENGTH, Tokenizers, build_tokenizers

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from transformers import CLIPTokenizer, T5Tokenizer

# Bump when anything below changes what gets written; a stale build is then rebuilt on next use.
BUILD_VERSION = "tiny-models-9"
VAE_SEED = 7
MARKER = ".complete"

# Every image model the openai SDK names, as models.toml's default model has them.
OPENAI_ALIASES = (
    "gpt-image-2", "gpt-image-2-2026-04-21", "gpt-image-1.5", "gpt-image-1", "gpt-image-1-mini",
    "chatgpt-image-latest", "dall-e-3", "dall-e-2", "gpt-image-2.5-sunburst", "gpt-image-2.5-sunburst-2026-09-08",
    "gpt-image-2.5-flare", "gpt-image-2.5-flare-2026-09-08", "gpt-image-2.6-sunburst", "gpt-image-2.6-flare",
)  # fmt: skip

CLIP_HIDDEN = 32
# SDXL's second encoder is wider than its first (1280 and 768): diffusers' single-file loader tells them apart by it.
OPEN_CLIP_HIDDEN = 48
T5_D_MODEL = 64  # >= the two CLIP widths concatenated, which SD3 pads up to the T5 width


@dataclass(frozen=True)
class _ModelEntry:
    """One `[models.NAME]` table of the generated models.toml."""

    name: str
    family: str
    default_size: str
    multiple_of: int
    guidance: float
    max_sequence_length: int | None = None
    aliases: tuple[str, ...] = ()
    extra: str = ""  # further model-level keys, as TOML lines


_ENTRIES = (
    # The default model routes edits with several images to the Kontext model, as models.toml's flux-schnell does.
    _ModelEntry(
        "tiny-flux",
        "flux",
        "1024x1024",
        16,
        3.5,
        max_sequence_length=64,
        aliases=OPENAI_ALIASES,
        extra='references_model = "tiny-flux-kontext"\n',
    ),
    _ModelEntry("tiny-sd15", "sd15", "512x512", 8, 7.5),
    _ModelEntry("tiny-sdxl", "sdxl", "1024x1024", 8, 5.0),
    _ModelEntry("tiny-sd3", "sd3", "1024x1024", 16, 4.5, max_sequence_length=64),
    _ModelEntry(
        "tiny-flux-kontext",
        "flux",
        "1024x1024",
        16,
        2.5,
        max_sequence_length=64,
        extra='variant = "kontext"\nmax_input_images = 16\n',
    ),  # fmt: skip
    _ModelEntry("tiny-flux-fill", "flux", "1024x1024", 16, 30.0, max_sequence_length=64, extra='variant = "fill"\n'),
)
MODEL_NAMES = tuple(entry.name for entry in _ENTRIES)


def build_tiny_models(out_dir: Path, *, force: bool = False) -> Path:
    """Build (or reuse) the tiny pipelines under `out_dir`; return the path of `out_dir/models.toml`."""
    out_dir = Path(out_dir)
    toml_path = out_dir / "models.toml"
    out_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(out_dir / ".lock"):
        if not force and _is_complete(out_dir):
            return toml_path
        (out_dir / MARKER).unlink(missing_ok=True)
        _remove_partials(out_dir)
        tokenizers = build_tokenizers()
        builders: dict[str, Callable[[Tokenizers], DiffusionPipeline]] = {
            "tiny-flux": _flux_pipeline,
            "tiny-flux-kontext": _flux_kontext_pipeline,
            "tiny-flux-fill": _flux_fill_pipeline,
            "tiny-sd15": _sd15_pipeline,
            "tiny-sdxl": _sdxl_pipeline,
            "tiny-sd3": _sd3_pipeline,
        }
        for name, build in builders.items():
            _save_atomically(build(tokenizers), out_dir / name)
        _write_atomically(toml_path, models_toml())
        _write_atomically(out_dir / MARKER, _marker_text())
    return toml_path


def models_toml() -> str:
    """The registry file for the tiny models, with `source` paths relative to the file."""
    parts = ['# Written by localimg.testing.tiny; tiny random-weight models for tests.\n',
             f'default_model = "{_ENTRIES[0].name}"\n']  # fmt: skip
    for entry in _ENTRIES:
        seq = "" if entry.max_sequence_length is None else f", max_sequence_length = {entry.max_sequence_length}"
        presets = "\n".join(
            f"{level} = {{ steps = {steps}, guidance = {entry.guidance}{seq} }}"
            for level, steps in (("low", 1), ("medium", 2), ("high", 3), ("xhigh", 4), ("max", 5))
        )
        parts.append(
            f"""
[models.{entry.name}]
family = "{entry.family}"
description = "Tiny {entry.family} test model (random denoiser, briefly trained VAE): for tests only."
source = {{ path = "{entry.name}" }}
aliases = {json.dumps(list(entry.aliases))}
default_size = "{entry.default_size}"
max_batch = 4
{entry.extra}limits = {{ min_side = 64, max_side = 2048, max_pixels = 4194304, multiple_of = {entry.multiple_of} }}

[models.{entry.name}.quality]
auto = "medium"
{presets}
"""
        )
    return "".join(parts)


# --- bookkeeping -------------------------------------------------------------------------------------------


def _marker_text() -> str:
    # The saved formats follow the library versions, so a library upgrade triggers a rebuild.
    return f"{BUILD_VERSION} diffusers={version('diffusers')} transformers={version('transformers')}\n"


def _is_complete(out_dir: Path) -> bool:
    marker = out_dir / MARKER
    if not marker.is_file() or marker.read_text(encoding="utf-8") != _marker_text():
        return False
    return (out_dir / "models.toml").is_file() and all(
        (out_dir / n / "model_index.json").is_file() for n in MODEL_NAMES
    )


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Serialise concurrent builders (e.g. pytest-xdist workers) on one output folder."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: builds there are single-process
        yield
        return
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_partials(out_dir: Path) -> None:
    """Drop what an interrupted build left behind (we hold the lock, so no live build owns them)."""
    for leftover in out_dir.glob(".*.partial-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _save_atomically(pipe: DiffusionPipeline, target: Path) -> None:
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def _write_atomically(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.partial-{os.getpid()}")
    staging.write_text(text, encoding="utf-8")
    staging.replace(path)


# --- shared components -------------------------------------------------------------------------------------


def _seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _clip_config(tokenizer: CLIPTokenizer, *, hidden: int = CLIP_HIDDEN) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        projection_dim=hidden,
        num_hidden_layers=2,  # SDXL reads the penultimate hidden state
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _clip_text_model(tokenizer: CLIPTokenizer, seed: int) -> Any:
    from transformers import CLIPTextModel

    _seeded(seed)
    return CLIPTextModel(_clip_config(tokenizer)).eval()


def _clip_text_model_with_projection(tokenizer: CLIPTokenizer, seed: int, *, hidden: int = CLIP_HIDDEN) -> Any:
    from transformers import CLIPTextModelWithProjection

    _seeded(seed)
    return CLIPTextModelWithProjection(_clip_config(tokenizer, hidden=hidden)).eval()


def _t5_encoder(tokenizer: T5Tokenizer, seed: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    _seeded(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=T5_D_MODEL,
        d_kv=16,
        d_ff=T5_D_MODEL * 2,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=64,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as FLUX and SD3 use
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config).eval()


def _vae(latent_channels: int, scaling_factor: float, shift_factor: float | None) -> Any:
    flow_vae = shift_factor is not None
    vae = _vae_architecture(latent_channels, flow_vae, scaling_factor, shift_factor)
    vae.load_state_dict(_trained_vae_weights(latent_channels, flow_vae))
    return vae.eval()


@functools.cache
def _trained_vae_weights(latent_channels: int, flow_vae: bool) -> dict[str, Any]:
    """Weights of an autoencoder trained briefly to reconstruct pictures (see tiny_vae.py): trained once per
    architecture in a process, and shared by the families that have that architecture."""
    from localimg.testing.tiny_vae import train_autoencoder

    _seeded(VAE_SEED)
    vae = train_autoencoder(_vae_architecture(latent_channels, flow_vae, 1.0, 0.0 if flow_vae else None), VAE_SEED)
    return {name: tensor.detach().clone() for name, tensor in vae.state_dict().items()}


def _vae_architecture(latent_channels: int, flow_vae: bool, scaling_factor: float, shift_factor: float | None) -> Any:
    from diffusers import AutoencoderKL

    # Four blocks give the real 8x downsampling. The mid-block attention is dropped: at 1024px it would
    # attend over 16k latent positions and dominate the run time.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 16, 16),  # the two full-resolution levels dominate the cost: keep them thin
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=1024,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=not flow_vae,  # the FLUX and SD3 VAEs have no quant convs
        use_post_quant_conv=not flow_vae,
        mid_block_add_attention=False,
    )


def _flow_scheduler(*, dynamic: bool) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    if dynamic:  # FLUX.1-dev's scheduler: the shift follows the image's token count
        return FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )  # fmt: skip
    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def _sd_scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    # "trailing" spacing starts even 1- and 2-step runs from pure noise, which short test runs need.
    return EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1,
    )  # fmt: skip


def _unet(*, cross_attention_dim: int, sample_size: int, seed: int, **extra: Any) -> Any:
    from diffusers import UNet2DConditionModel

    _seeded(seed)
    # Attention only at the quarter-resolution level: at 1024px it sees 1k positions, not 4k or 16k.
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16, 32),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=2,
        cross_attention_dim=cross_attention_dim,
        **extra,
    ).eval()


# --- pipelines ---------------------------------------------------------------------------------------------


def _flux_pipeline(tok: Tokenizers) -> DiffusionPipeline:
    from diffusers import FluxPipeline

    return FluxPipeline(**_flux_components(tok, seed=10))


def _flux_kontext_pipeline(tok: Tokenizers) -> DiffusionPipeline:
    # FLUX.1 Kontext has FLUX.1's architecture; its checkpoints name FluxKontextPipeline in model_index.json.
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline(**_flux_components(tok, seed=50))


def _flux_fill_pipeline(tok: Tokenizers) -> DiffusionPipeline:
    from diffusers import FluxFillPipeline

    # FLUX.1 Fill's transformer also reads the packed masked-image latents (64) and the packed 8x8 mask (256).
    return FluxFillPipeline(**_flux_components(tok, seed=60, in_channels=16 * 4 + 16 * 4 + 64 * 4, out_channels=16 * 4))


def _flux_components(
    tok: Tokenizers, seed: int, in_channels: int = 16 * 4, out_channels: int | None = None
) -> dict[str, Any]:
    from diffusers import FluxTransformer2DModel

    _seeded(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,  # the pipeline packs 2x2 patches of the 16-channel latent itself
        out_channels=out_channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_D_MODEL,
        pooled_projection_dim=CLIP_HIDDEN,  # CLIPTextModel's pooled output
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ).eval()
    return dict(
        scheduler=_flow_scheduler(dynamic=True),
        vae=_vae(16, 0.3611, 0.1159),
        text_encoder=_clip_text_model(tok.clip, seed=seed + 2),
        tokenizer=tok.clip,
        text_encoder_2=_t5_encoder(tok.t5, seed=seed + 3),
        tokenizer_2=tok.t5,
        transformer=transformer,
    )


def _sd15_pipeline(tok: Tokenizers) -> DiffusionPipeline:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=_vae(4, 0.18215, None),
        text_encoder=_clip_text_model(tok.clip, seed=22),
        tokenizer=tok.clip,
        unet=_unet(cross_attention_dim=CLIP_HIDDEN, sample_size=64, seed=20),
        scheduler=_sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl_pipeline(tok: Tokenizers) -> DiffusionPipeline:
    from diffusers import StableDiffusionXLPipeline

    time_embed_dim = 8
    unet = _unet(
        cross_attention_dim=CLIP_HIDDEN + OPEN_CLIP_HIDDEN,  # both text encoders' hidden states, concatenated
        sample_size=128,
        seed=30,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # six micro-conditioning numbers (original size, crop, target size) plus text_encoder_2's pooled output
        projection_class_embeddings_input_dim=time_embed_dim * 6 + OPEN_CLIP_HIDDEN,
        use_linear_projection=True,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(4, 0.13025, None),
        text_encoder=_clip_text_model(tok.clip, seed=32),
        text_encoder_2=_clip_text_model_with_projection(tok.clip, seed=33, hidden=OPEN_CLIP_HIDDEN),
        tokenizer=tok.clip,
        tokenizer_2=tok.clip,
        unet=unet,
        scheduler=_sd_scheduler(),
    )


def _sd3_pipeline(tok: Tokenizers) -> DiffusionPipeline:
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    _seeded(40)
    transformer = SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_D_MODEL,
        caption_projection_dim=32,  # must equal heads * head_dim
        pooled_projection_dim=CLIP_HIDDEN * 2,  # both CLIPs' projected outputs, concatenated
        pos_embed_max_size=128,  # 128 patches of 16px: sides up to 2048
    ).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=_flow_scheduler(dynamic=False),
        vae=_vae(16, 1.5305, 0.0609),
        text_encoder=_clip_text_model_with_projection(tok.clip, seed=42),
        tokenizer=tok.clip,
        text_encoder_2=_clip_text_model_with_projection(tok.clip, seed=43),
        tokenizer_2=tok.clip,
        text_encoder_3=_t5_encoder(tok.t5, seed=44),
        tokenizer_3=tok.t5,
    )
