"""The contract between the service and the inference backends. No torch here.

The service turns a request into a `GenerationPlan` (every default resolved); a backend turns a plan into
PIL images. Backends know devices and diffusers; they know nothing of HTTP or OpenAI's wire format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from PIL import Image

    from localimg.registry import ModelSpec


@dataclass(frozen=True)
class GenerationPlan:
    """One pipeline job: `len(seeds)` images of one prompt at one size."""

    model: str
    prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seeds: tuple[int, ...]  # image i is drawn from seeds[i], so it is reproducible whatever n is
    negative_prompt: str | None = None
    max_sequence_length: int | None = None

    @property
    def n(self) -> int:
        return len(self.seeds)


# Called after each denoising step with (steps_done, total_steps). Raising from it cancels the job:
# the exception propagates out of `generate`.
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" | "mps" | "cpu"
    name: str  # e.g. "NVIDIA H100 80GB HBM3" or "cpu"


class ImageBackend(Protocol):
    """One model on one device."""

    spec: ModelSpec

    def load(self) -> None:
        """Load weights onto the device. Raises ModelUnavailableError with a helpful message."""

    def generate(self, plan: GenerationPlan, on_step: StepCallback | None = None) -> list[Image.Image]:
        """Run the plan; returns `plan.n` RGB images of `plan.width` x `plan.height`."""

    def count_tokens(self, text: str) -> int:
        """Prompt length in the model's primary tokenizer (for `usage`)."""

    def unload(self) -> None:
        """Free the device memory this model holds."""


class BackendFactory(Protocol):
    """Builds the backend for a model spec (the composition root decides the device)."""

    def __call__(self, spec: ModelSpec) -> ImageBackend: ...
