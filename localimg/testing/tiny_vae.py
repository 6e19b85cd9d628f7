"""A few seconds of autoencoder training for the tiny VAEs, so that they give back roughly what they are given.

A random-weight VAE decodes every latent to much the same noise, so nothing downstream of it can be measured:
an edit at `input_fidelity="high"` looks no closer to its input than one at "low", and a mask-free image-to-image
keeps nothing of the picture. Training the tiny VAE to reconstruct simple synthetic pictures (smooth colour fields
with rectangles) fixes that: an input survives encode -> decode as a blurred version of itself, and denoising
moves a result away from it in proportion to the strength, as with a real model. The denoisers stay random.

Training is deterministic (fixed seeds, CPU), so the tiny models stay reproducible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL

TRAIN_STEPS = 150
BATCH = 8
SIDE = 64
LEARNING_RATE = 3e-3


def train_autoencoder(vae: AutoencoderKL, seed: int, steps: int = TRAIN_STEPS) -> AutoencoderKL:
    """Train `vae` in place to reconstruct synthetic pictures; returns it in eval mode."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=LEARNING_RATE)
    vae.train()
    for _ in range(steps):
        pictures = synthetic_pictures(generator, BATCH, SIDE)
        posterior = vae.encode(pictures).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(latents).sample
        # The small latent penalty keeps latents near unit scale, the range the pipelines' noise assumes.
        loss = torch.nn.functional.mse_loss(reconstruction, pictures) + 1e-4 * posterior.mean.pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return vae.eval()


def synthetic_pictures(generator: torch.Generator, count: int, side: int) -> torch.Tensor:
    """`count` RGB pictures in [-1, 1]: a smooth random colour field with two flat rectangles on it."""
    import torch

    coarse = torch.rand(count, 3, 4, 4, generator=generator) * 2 - 1
    pictures = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
    pictures = pictures.clamp(-1, 1)
    for picture in pictures:
        for _ in range(2):
            top, bottom = sorted(torch.randint(0, side, (2,), generator=generator).tolist())
            left, right = sorted(torch.randint(0, side, (2,), generator=generator).tolist())
            picture[:, top : bottom + 1, left : right + 1] = torch.rand(3, 1, 1, generator=generator) * 2 - 1
    return pictures
