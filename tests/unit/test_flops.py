"""FLOP and MFU arithmetic of the benchmark, checked against the figures in shared/spec/performance.md."""

from __future__ import annotations

import pytest

from localimg.testing.flops import FLUX, TERA, image_flops, mfu, peak_flops


def test_flux_step_matches_flop_counter_figure():
    # performance.md: 74.38 TFLOP per step, measured with torch's FlopCounterMode on the real architecture.
    assert FLUX.forward_flops(1024, 1024, 512) / TERA == pytest.approx(74.38, rel=0.005)


@pytest.mark.parametrize(
    ("arch", "size", "steps", "tokens", "cfg", "expected_tf"),
    [
        ("flux", 1024, 28, 512, False, 2098),  # FLUX.1-dev
        ("flux", 1024, 4, 256, False, 291),  # FLUX.1-schnell (256 T5 tokens)
        ("sdxl", 1024, 30, 0, True, 416),
        ("sd3.5-large", 1024, 28, 256, True, 1759),
        ("sd15", 512, 25, 0, True, 43),
    ],
)
def test_image_totals_match_performance_table(arch, size, steps, tokens, cfg, expected_tf):
    cost = image_flops(arch, size, size, steps, text_tokens=tokens, cfg=cfg)
    assert cost.total / TERA == pytest.approx(expected_tf, rel=0.02)
    assert cost.total == cost.denoiser + cost.vae + cost.text


def test_sd35_medium_is_smaller_than_large_and_counts_dual_attention():
    medium = image_flops("sd3.5-medium", 1024, 1024, 28, text_tokens=256, cfg=True)
    large = image_flops("sd3.5-large", 1024, 1024, 28, text_tokens=256, cfg=True)
    assert medium.denoiser < large.denoiser / 2


def test_cost_grows_with_pixels_and_steps():
    small = image_flops("flux", 512, 512, 28, text_tokens=512)
    big = image_flops("flux", 1024, 1024, 28, text_tokens=512)
    assert big.denoiser > 3 * small.denoiser
    assert image_flops("sdxl", 1024, 1024, 60, cfg=True).denoiser == pytest.approx(
        2 * image_flops("sdxl", 1024, 1024, 30, cfg=True).denoiser
    )


def test_unknown_architecture_is_an_error():
    with pytest.raises(ValueError, match="no FLOP model"):
        image_flops("tiny", 64, 64, 2)


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("CPU (x86_64)", None),
    ],
)
def test_peak_by_device_name(name, peak):
    assert peak_flops(name) == peak


def test_mfu():
    # FLUX.1-dev in 2.12 s on an H100 is the bf16 floor: 100 %.
    assert mfu(2098e12, 2.12, 989e12) == pytest.approx(1.0, rel=0.01)
    assert mfu(2098e12, 4.24, 989e12) == pytest.approx(0.5, rel=0.01)
    assert mfu(None, 1.0, 989e12) is None
    assert mfu(1e12, 1.0, None) is None
    assert mfu(1e12, 0.0, 989e12) is None
