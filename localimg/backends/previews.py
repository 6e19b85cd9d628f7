"""Previews of images still being denoised: the clean image the denoiser currently predicts, VAE-decoded.

Decoding the current latent would show mostly noise until the last steps (and nonsense for k-diffusion-scaled
latents); the predicted clean latent (x0) already shows the composition after the first step. Diffusers does not
hand x0 to the step callback, so `DenoisingTap` wraps the scheduler's `step` for the duration of one pipeline call
and keeps the last step's inputs and outputs; x0 is computed from them only when a preview is asked for.

The decode is at full resolution. A decode at a quarter of it costs 2-4x less, but on the random-weight test
models (whose images are high-frequency noise) its previews no longer approach the final image, so a test could
not tell a converging preview from a blurred one. Cost, measured with scripts/measure_previews.py: README,
"Streaming".
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from localimg.backends.families import FamilyAdapter


@dataclass(frozen=True)
class _Step:
    model_output: torch.Tensor
    timestep: Any
    sample: torch.Tensor  # the latent the step started from
    prev_sample: torch.Tensor  # the latent it produced
    pred_original_sample: torch.Tensor | None  # x0, when the scheduler reports it


class DenoisingTap:
    """Records the last scheduler step of a pipeline call and estimates the clean latent from it."""

    def __init__(self, scheduler: Any) -> None:
        self._scheduler = scheduler
        self._last: _Step | None = None

    @contextmanager
    def attached(self) -> Iterator[DenoisingTap]:
        """Wrap `scheduler.step` while the block runs (an instance attribute shadowing the class method)."""
        scheduler = self._scheduler
        original = scheduler.step

        signature = inspect.signature(original)

        def step(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            given = signature.bind(*args, **kwargs).arguments
            model_output, timestep, sample = given["model_output"], given["timestep"], given["sample"]
            values = out if isinstance(out, tuple) else (out.prev_sample, getattr(out, "pred_original_sample", None))
            x0 = values[1] if len(values) > 1 and isinstance(values[1], torch.Tensor) else None
            # Only references are kept: this runs at every step of every job, previews or not.
            self._last = _Step(model_output, timestep, sample, values[0], x0)
            return out

        self._last = None
        scheduler.step = step
        try:
            yield self
        finally:
            del scheduler.step
            self._last = None

    def clean_latents(self) -> torch.Tensor:
        """The denoiser's current prediction of the final latents (in the pipeline's latent layout)."""
        last = self._last
        if last is None:
            raise RuntimeError("no denoising step has run yet")
        if last.pred_original_sample is not None:  # Euler, DDIM, DDPM, LMS, ...
            return last.pred_original_sample
        scheduler = self._scheduler
        outputs = getattr(scheduler, "model_outputs", None)  # DPM-Solver keeps its x0 predictions there
        if outputs and isinstance(outputs[-1], torch.Tensor) and outputs[-1].shape == last.sample.shape:
            return outputs[-1]
        # The sigma is read now, from the step callback: the scheduler has not moved since the step.
        if "FlowMatch" in type(scheduler).__name__ and (sigma := _sigma_of_last_step(scheduler)) is not None:
            # Rectified flow: x_t = (1 - sigma) x0 + sigma noise and the model predicts v = noise - x0.
            return last.sample.float() - sigma * last.model_output.float()
        alphas = getattr(scheduler, "alphas_cumprod", None)
        if alphas is not None:  # PNDM and other DDPM-parameterised schedulers
            alpha = float(alphas[int(last.timestep)])
            return _ddpm_x0(last.sample.float(), last.model_output.float(), alpha, scheduler.config.prediction_type)
        return last.prev_sample


def _sigma_of_last_step(scheduler: Any) -> float | None:
    sigmas, index = getattr(scheduler, "sigmas", None), getattr(scheduler, "step_index", None)
    if sigmas is None or index is None or index < 1:
        return None
    return float(sigmas[index - 1])  # step() has already advanced the index


def _ddpm_x0(sample: torch.Tensor, model_output: torch.Tensor, alpha: float, prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return (sample - (1 - alpha) ** 0.5 * model_output) / alpha**0.5
    if prediction_type == "v_prediction":
        return alpha**0.5 * sample - (1 - alpha) ** 0.5 * model_output
    return model_output  # "sample"


def decode_preview(
    pipe: DiffusionPipeline, adapter: FamilyAdapter, latents: torch.Tensor, width: int, height: int
) -> list[Image.Image]:
    """VAE-decode `latents` (pipeline layout); return one RGB image of `width` x `height` per latent."""
    latents = adapter.unpack_latents(pipe, latents, width, height)
    vae = pipe.vae
    latents = _to_vae_space(vae.config, latents)
    # SDXL's VAE overflows in float16: decode in float32, as the pipeline does (see device.vae_dtype).
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        decoded = vae.decode(latents.to(device=vae.device, dtype=vae.dtype), return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
    images = pipe.image_processor.postprocess(decoded.float(), output_type="pil")
    return [_at_size(image, width, height) for image in images]


def _to_vae_space(config: Any, latents: torch.Tensor) -> torch.Tensor:
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:  # SDXL VAEs that publish latent statistics
        shape = (1, len(mean), 1, 1)
        mean_t = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(shape)
        std_t = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(shape)
        return latents * std_t / config.scaling_factor + mean_t
    shift = getattr(config, "shift_factor", None) or 0.0  # FLUX and SD3 VAEs
    return latents / config.scaling_factor + shift


def _at_size(image: Image.Image, width: int, height: int) -> Image.Image:
    image = image if image.mode == "RGB" else image.convert("RGB")
    return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.BILINEAR)
