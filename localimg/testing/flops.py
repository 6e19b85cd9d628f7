"""FLOPs per image and MFU for the benchmark (a multiply-add counts 2). Pure arithmetic, no torch.

Transformer families (FLUX, SD3) are counted from their architecture: every block applies 12·D² weights per token
(QKV 3, output 1, MLP 8; FLUX's single blocks fuse the same 12) and joint attention costs 4·N²·D, so one block is
24·D²·N + 4·N²·D. For FLUX.1 at 1024² with 512 text tokens that is 74.4 TFLOP per step, the figure
torch's FlopCounterMode gives on the real architecture (see /work/shared/spec/performance.md). UNets (SD 1.5,
SDXL) and the VAE decoder use performance.md's measured per-pass figures, scaled linearly with the pixel count
(their attention is a small share of the work, so the quadratic term is ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

TERA = 1e12
_REF_PIXELS = 1024 * 1024
VAE_DECODE_FLOPS_1024 = 10.5 * TERA  # one 1024² decode, the same decoder design in all four families
SDXL_UNET_FLOPS_1024 = 13.5 * TERA / 2  # performance.md: 13.5 TF per step with CFG (two passes) at 1024²
# performance.md: ≈43 TF for 25 steps with CFG at 512², less the VAE decode (a quarter of 10.5 TF).
SD15_UNET_FLOPS_512 = (43.0 - VAE_DECODE_FLOPS_1024 / 4 / TERA) * TERA / 50
T5_XXL_PARAMS = 4.76e9
CLIP_L_PARAMS = 123e6
CLIP_G_PARAMS = 695e6
CLIP_TOKENS = 77

# Dense bf16 tensor-core peaks (datasheets, no sparsity); matched by substring of the device name, first wins.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756 * TERA),
    ("H100 NVL", 835 * TERA),
    ("H100", 989 * TERA),
    ("H200", 989 * TERA),
    ("H800", 989 * TERA),
    ("GH200", 989 * TERA),
    ("A100", 312 * TERA),
    ("L40S", 362 * TERA),
    ("RTX 4090", 165 * TERA),
)


@dataclass(frozen=True)
class MMDiT:
    """A joint-attention transformer: `blocks` blocks of width `hidden` over image + text tokens."""

    hidden: int
    blocks: int
    dual_attention_blocks: int = 0  # SD3.5 medium (MMDiT-X): an extra self-attention over image tokens
    patch: int = 16  # image pixels per token side (8x VAE, 2x2 patches)

    def forward_flops(self, width: int, height: int, text_tokens: int) -> float:
        image = (width // self.patch) * (height // self.patch)
        tokens = image + text_tokens
        d = self.hidden
        block = 24 * d * d * tokens + 4 * tokens * tokens * d
        extra = 8 * d * d * image + 4 * image * image * d
        return self.blocks * block + self.dual_attention_blocks * extra


FLUX = MMDiT(hidden=3072, blocks=19 + 38)
SD35_LARGE = MMDiT(hidden=38 * 64, blocks=38)
SD35_MEDIUM = MMDiT(hidden=24 * 64, blocks=24, dual_attention_blocks=13)


@dataclass(frozen=True)
class ImageCost:
    """The FLOPs of one image, by stage."""

    denoiser: float
    vae: float
    text: float

    @property
    def total(self) -> float:
        return self.denoiser + self.vae + self.text


def image_flops(
    arch: str, width: int, height: int, steps: int, *, text_tokens: int = 0, cfg: bool = False
) -> ImageCost:
    """FLOPs for one image of `arch` ("flux", "sd3.5-large", "sd3.5-medium", "sdxl", "sd15").

    `text_tokens` is the T5 length (max_sequence_length) for FLUX and SD3; `cfg` doubles the denoiser passes
    and the text encoding (the negative prompt).
    """
    passes = steps * (2 if cfg else 1)
    encodes = 2 if cfg else 1
    pixels = width * height
    vae = VAE_DECODE_FLOPS_1024 * pixels / _REF_PIXELS
    clip_l = 2 * CLIP_L_PARAMS * CLIP_TOKENS
    clip_g = 2 * CLIP_G_PARAMS * CLIP_TOKENS
    t5 = 2 * T5_XXL_PARAMS * text_tokens
    if arch == "flux":
        return ImageCost(passes * FLUX.forward_flops(width, height, text_tokens), vae, encodes * (t5 + clip_l))
    if arch in ("sd3.5-large", "sd3.5-medium"):
        model = SD35_LARGE if arch == "sd3.5-large" else SD35_MEDIUM
        # SD3 joins CLIP's 77 tokens and T5's tokens into one text sequence.
        denoiser = passes * model.forward_flops(width, height, CLIP_TOKENS + text_tokens)
        return ImageCost(denoiser, vae, encodes * (t5 + clip_l + clip_g))
    if arch == "sdxl":
        return ImageCost(passes * SDXL_UNET_FLOPS_1024 * pixels / _REF_PIXELS, vae, encodes * (clip_l + clip_g))
    if arch == "sd15":
        return ImageCost(passes * SD15_UNET_FLOPS_512 * pixels / (512 * 512), vae, encodes * clip_l)
    raise ValueError(f"no FLOP model for {arch!r}")


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by name, or None when unknown (CPUs included)."""
    for fragment, peak in PEAK_BF16_FLOPS:
        if fragment.lower() in device_name.lower():
            return peak
    return None


def mfu(flops: float | None, seconds: float | None, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak; None when any input is unknown."""
    if flops is None or peak is None or seconds is None or seconds <= 0:
        return None
    return flops / seconds / peak
