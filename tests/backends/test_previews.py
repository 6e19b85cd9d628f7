"""Step previews on the four tiny families: one RGB image per image of the call, at the plan's size, converging."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from localimg.backends.base import GenerationPlan, StepProgress
from localimg.backends.device import resolve_device
from localimg.backends.diffusers_backend import DiffusersBackend
from localimg.registry import Registry


@pytest.fixture(scope="module", params=["tiny-flux", "tiny-sd15", "tiny-sdxl", "tiny-sd3"])
def backend(request: pytest.FixtureRequest, tiny_models_toml: Path) -> Iterator[DiffusersBackend]:
    spec = Registry.load(tiny_models_toml).resolve(request.param)
    assert spec is not None
    backend = DiffusersBackend(spec, resolve_device("cpu"))
    backend.load()
    yield backend
    backend.unload()


def test_previews_have_the_plan_size_and_converge(backend: DiffusersBackend):
    preset = backend.spec.quality["low"]
    plan = GenerationPlan(
        model=backend.spec.name, prompt="a lighthouse", width=192, height=128, steps=4,
        guidance_scale=preset.guidance, seeds=(1, 2), max_sequence_length=preset.max_sequence_length,
    )  # fmt: skip
    previews: list[list[np.ndarray]] = []

    def on_step(progress: StepProgress) -> None:
        images = progress.preview()
        assert len(images) == len(progress.images) == 2
        assert all(image.mode == "RGB" and image.size == (192, 128) for image in images)
        previews.append([np.asarray(image, dtype=np.float32) for image in images])

    finals = [np.asarray(image, dtype=np.float32) for image in backend.generate([plan], on_step)]
    assert len(previews) == backend._pipe.num_timesteps
    for i, final in enumerate(finals):
        first, before_last = (np.abs(step[i] - final).mean() for step in (previews[0], previews[-2]))
        assert before_last < first
        assert np.abs(previews[-1][i] - final).mean() < 1.0, "after the last step the preview is the image"
    assert "step" not in vars(backend._pipe.scheduler), "the scheduler is left as it was"
