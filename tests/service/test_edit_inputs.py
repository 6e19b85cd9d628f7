"""How the service holds an edit's uploads: references no larger than any model could use them."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from PIL import Image

from localimg.protocol import ImageEditRequest
from localimg.registry import Registry
from localimg.service.engine import Engine, EngineConfig
from localimg.service.image_store import ImageStore
from localimg.service.images import ImageService, Upload
from tests.service.standin import StandInBackend


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_references_are_scaled_down_to_the_largest_output_as_they_are_decoded():
    """A model sees each reference at most at the output's size; sixteen large photos held at full size until the
    job ran took gigabytes."""
    limits = {"min_side": 64, "max_side": 512, "max_pixels": 512 * 512}
    registry = Registry.from_dict(
        {
            "models": {
                "kontext": {
                    "family": "flux", "variant": "kontext", "max_input_images": 4, "limits": limits,
                    "default_size": "256x256", "source": {"path": "/nonexistent/kontext"},
                },
            },
        },
        base_dir=Path("."),
    )  # fmt: skip
    engine = Engine({"kontext": StandInBackend(name="kontext", steps=1)}, config=EngineConfig(batch_window_s=0.0))
    service = ImageService(registry, engine, ImageStore(ttl_s=60))
    uploads = [Upload("image", png(300, 300)), Upload("image[1]", png(2000, 1000)), Upload("image[2]", png(64, 64))]
    try:
        job = asyncio.run(service.plan_edit(ImageEditRequest(prompt="x", model="kontext"), uploads, None))
    finally:
        engine.close()
    assert job.plan.edit is not None
    first, large, small = job.plan.edit.images
    assert first.size == (job.size.width, job.size.height)
    assert large.size == (724, 362)  # 2:1 kept, at most 512 * 512 pixels
    assert small.size == (64, 64)
