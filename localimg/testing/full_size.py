"""Full-size random-weight pipelines from the real configs, for GPU benchmarks (speed does not depend on weight
values). Transformers/UNets, VAEs and text encoders (T5-XXL, CLIP-L, CLIP-G) have their published shapes; the
tokenizers are the tiny locally trained ones from `localimg.testing.tiny_tokenizers` (tokenizing costs nothing
measurable, and their ids fit the full vocabularies). Nothing is downloaded.

`build_full_size(name, device)` constructs the pipeline directly on `device` in bfloat16 (no CPU copy, no init
on the host), ready to be saved with `save_pretrained` and/or timed in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

# Published configs (diffusers/transformers config.json of each model), written out so no hub access is needed.
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu")  # fmt: skip
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, hidden_act="gelu")  # fmt: skip
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              is_encoder_decoder=False, use_cache=False)  # fmt: skip
VAE_COMMON = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                  layers_per_block=2, norm_num_groups=32)  # fmt: skip
SD3_5_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64,
                         joint_attention_dim=4096, pooled_projection_dim=2048, qk_norm="rms_norm")  # fmt: skip

FULL_SIZE_MODELS = ("flux-dev", "flux-schnell", "sdxl", "sd15", "sd35-medium", "sd35-large")


def build_full_size(name: str, device: torch.device) -> DiffusionPipeline:
    """One of `FULL_SIZE_MODELS`, built on `device` in bfloat16 with random weights."""
    import torch

    from localimg.testing.tiny_tokenizers import build_tokenizers

    builders: dict[str, Callable[[Any, Any], DiffusionPipeline]] = {
        "flux-dev": lambda tok, scheduler: _flux(tok, scheduler, dev=True),
        "flux-schnell": lambda tok, scheduler: _flux(tok, scheduler, dev=False),
        "sdxl": _sdxl,
        "sd15": _sd15,
        "sd35-medium": lambda tok, scheduler: _sd35(tok, scheduler, large=False),
        "sd35-large": lambda tok, scheduler: _sd35(tok, scheduler, large=True),
    }
    if name not in builders:
        raise ValueError(f"unknown full-size model {name!r}; known: {', '.join(builders)}")
    tokenizers = build_tokenizers()
    scheduler = _scheduler(name)  # outside the device/dtype context: schedulers keep float32 tables on the CPU
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(torch.bfloat16)
        with torch.device(device), torch.no_grad():
            pipe = builders[name](tokenizers, scheduler)
    finally:
        torch.set_default_dtype(previous)
    return pipe.to(device, torch.bfloat16)


def _scheduler(name: str) -> Any:
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, PNDMScheduler

    if name == "flux-dev":
        return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                               base_image_seq_len=256, max_image_seq_len=4096)  # fmt: skip
    if name == "flux-schnell":
        return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    if name == "sdxl":
        return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                      steps_offset=1, timestep_spacing="leading")  # fmt: skip
    if name == "sd15":
        return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             skip_prk_steps=True, steps_offset=1)  # fmt: skip
    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def _clip(tok: Any, config: dict[str, Any], *, projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=tok.clip.bos_token_id,
                         eos_token_id=tok.clip.eos_token_id, pad_token_id=tok.clip.pad_token_id, **config)  # fmt: skip
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _t5(tok: Any) -> Any:
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(pad_token_id=tok.t5.pad_token_id, eos_token_id=tok.t5.eos_token_id, **T5_XXL)
    return T5EncoderModel(cfg).eval()


def _vae(latent_channels: int, scaling: float, shift: float | None, *, quant_conv: bool, sample_size: int) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(latent_channels=latent_channels, scaling_factor=scaling, shift_factor=shift,
                         use_quant_conv=quant_conv, use_post_quant_conv=quant_conv, sample_size=sample_size,
                         force_upcast=False, **VAE_COMMON).eval()  # fmt: skip


def _flux(tok: Any, scheduler: Any, *, dev: bool) -> DiffusionPipeline:
    from diffusers import FluxPipeline, FluxTransformer2DModel

    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                         attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                         pooled_projection_dim=768, guidance_embeds=dev,
                                         axes_dims_rope=(16, 56, 56)).eval()  # fmt: skip
    return FluxPipeline(
        scheduler=scheduler, vae=_vae(16, 0.3611, 0.1159, quant_conv=False, sample_size=1024),
        text_encoder=_clip(tok, CLIP_L, projection=False), tokenizer=tok.clip,
        text_encoder_2=_t5(tok), tokenizer_2=tok.t5, transformer=transformer,
    )  # fmt: skip


def _sdxl(tok: Any, scheduler: Any) -> DiffusionPipeline:
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ).eval()  # fmt: skip
    return StableDiffusionXLPipeline(
        vae=_vae(4, 0.13025, None, quant_conv=True, sample_size=1024),
        text_encoder=_clip(tok, CLIP_L, projection=False), text_encoder_2=_clip(tok, CLIP_G, projection=True),
        tokenizer=tok.clip, tokenizer_2=tok.clip, unet=unet, scheduler=scheduler,
    )  # fmt: skip


def _sd15(tok: Any, scheduler: Any) -> DiffusionPipeline:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).eval()
    return StableDiffusionPipeline(
        vae=_vae(4, 0.18215, None, quant_conv=True, sample_size=512),
        text_encoder=_clip(tok, CLIP_L, projection=False), tokenizer=tok.clip, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def _sd35(tok: Any, scheduler: Any, *, large: bool) -> DiffusionPipeline:
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    if large:
        shape = dict(num_layers=38, num_attention_heads=38, caption_projection_dim=2432, pos_embed_max_size=192)
    else:
        shape = dict(num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=384,
                     dual_attention_layers=tuple(range(13)))  # fmt: skip
    transformer = SD3Transformer2DModel(**SD3_5_TRANSFORMER, **shape).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler,
        vae=_vae(16, 1.5305, 0.0609, quant_conv=False, sample_size=1024),
        text_encoder=_clip(tok, CLIP_L, projection=True), tokenizer=tok.clip,
        text_encoder_2=_clip(tok, CLIP_G, projection=True), tokenizer_2=tok.clip,
        text_encoder_3=_t5(tok), tokenizer_3=tok.t5,
    )  # fmt: skip
