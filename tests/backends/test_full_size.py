"""The full-size benchmark models have the published shapes: built on the meta device (no memory, no time), each
component's parameter count matches the model card's within 1 %. A wrong config here would make every GPU
figure in docs/benchmarks.md measure a different model."""

from __future__ import annotations

import pytest
import torch

from localimg.testing.full_size import FULL_SIZE_MODELS, build_full_size

CLIP_L, CLIP_G, T5_XXL, VAE = 0.123e9, 0.695e9, 4.762e9, 0.0838e9
PUBLISHED = {
    "flux-dev": {"transformer": 11.90e9, "text_encoder": CLIP_L, "text_encoder_2": T5_XXL, "vae": VAE},
    "flux-schnell": {"transformer": 11.89e9, "text_encoder": CLIP_L, "text_encoder_2": T5_XXL, "vae": VAE},
    "sdxl": {"unet": 2.567e9, "text_encoder": CLIP_L, "text_encoder_2": CLIP_G, "vae": VAE},
    "sd15": {"unet": 0.860e9, "text_encoder": CLIP_L, "vae": VAE},
    "sd35-medium": {"transformer": 2.243e9, "text_encoder": CLIP_L, "text_encoder_2": CLIP_G,
                    "text_encoder_3": T5_XXL, "vae": VAE},
    "sd35-large": {"transformer": 8.057e9, "text_encoder": CLIP_L, "text_encoder_2": CLIP_G,
                   "text_encoder_3": T5_XXL, "vae": VAE},
}  # fmt: skip


def test_every_full_size_model_has_published_counts():
    assert set(PUBLISHED) == set(FULL_SIZE_MODELS)


@pytest.mark.parametrize("name", FULL_SIZE_MODELS)
def test_full_size_model_matches_its_published_shape(name: str):
    pipe = build_full_size(name, torch.device("meta"))
    modules = {key: value for key, value in pipe.components.items() if isinstance(value, torch.nn.Module)}
    assert set(modules) == set(PUBLISHED[name])
    for key, module in modules.items():
        count = sum(parameter.numel() for parameter in module.parameters())
        assert count == pytest.approx(PUBLISHED[name][key], rel=0.01), key
        assert {parameter.dtype for parameter in module.parameters()} == {torch.bfloat16}, key
