"""The contract between the service and the inference backends. No torch here.

The service turns a request into a `GenerationPlan` (every default resolved); a backend turns a batch of
compatible plans into PIL images. Backends know devices and diffusers; they know nothing of HTTP or OpenAI's
wire format.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL import Image

    from localimg.registry import ModelSpec


@dataclass(frozen=True, eq=False)
class EditInputs:
    """What an edit or variation starts from. Compared by identity: images are not hashable values."""

    # images[0] is the image being edited, RGB at the plan's size; any others are references (RGB, as uploaded),
    # used only by families that take reference images.
    images: tuple[Image.Image, ...]
    # "L" at the plan's size: 255 = repaint, 0 = keep (diffusers' convention; the service converts OpenAI's
    # alpha masks). None: image-to-image over the whole picture.
    mask: Image.Image | None = None
    # How far the result may move from images[0]: 0 keeps it, 1 ignores it (diffusers' `strength`).
    strength: float = 0.6


@dataclass(frozen=True)
class GenerationPlan:
    """One request's pipeline job: `len(seeds)` images of one prompt at one size."""

    model: str
    prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seeds: tuple[int, ...]  # image i is drawn from seeds[i], so it is reproducible whatever n or the batch is
    negative_prompt: str | None = None
    max_sequence_length: int | None = None
    edit: EditInputs | None = None

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def batch_key(self) -> Hashable:
        """Plans with equal keys can share one pipeline call (their prompts and seeds may differ).

        Edits never share: each carries its own input images.
        """
        return (
            self.model,
            self.width,
            self.height,
            self.steps,
            self.guidance_scale,
            self.max_sequence_length,
            self.negative_prompt is not None,
            None if self.edit is None else id(self.edit),
        )


@dataclass(frozen=True)
class StepProgress:
    """Where a running job stands, passed to the step callback after each denoising step."""

    step: int  # steps done in the current pipeline call, 1-based
    steps: int  # steps the current pipeline call takes
    images: range  # flat indexes (over the whole batch) of the images the current call is making
    # Decodes the current call's images as they stand: RGB at the plan's size, one per index in `images`.
    # Lazy, because it costs about one VAE decode: call it only for the steps a client wants to see.
    preview: Callable[[], list[Image.Image]]


# Called after each denoising step. Raising from it cancels the job: the exception propagates out of `generate`.
StepCallback = Callable[[StepProgress], None]


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" | "mps" | "cpu"
    name: str  # e.g. "NVIDIA H100 80GB HBM3" or "cpu"


class ImageBackend(Protocol):
    """One model on one device."""

    spec: ModelSpec

    def load(self) -> None:
        """Load weights onto the device. Raises ModelUnavailableError with a helpful message."""

    def generate(self, batch: Sequence[GenerationPlan], on_step: StepCallback | None = None) -> list[Image.Image]:
        """Run plans that share one `batch_key`; returns their images flat, in plan order then seed order
        (`sum(plan.n)` RGB images at the plans' size)."""

    def count_tokens(self, text: str) -> int:
        """Prompt length in the model's primary tokenizer (for `usage`)."""

    def unload(self) -> None:
        """Free the device memory this model holds."""


@runtime_checkable
class SizedBackend(Protocol):
    """A backend that can tell how much device memory its loaded model holds (for the engine's memory budget)."""

    def memory_bytes(self) -> int:
        """Bytes of weights the loaded model keeps on its device (0 when not loaded)."""
        ...


@runtime_checkable
class PhasedLoadBackend(Protocol):
    """A backend that can tell where the time of its last load went (for the operator's metrics)."""

    load_phases: Mapping[str, float]  # phase -> seconds, in order; empty before the first load
