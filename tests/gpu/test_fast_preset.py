"""On a CUDA GPU: the lossy `preset = "fast"` (fp8 GEMMs, a step cache, compiled blocks) loads and serves
generations and edits on every family it applies to. Skipped without CUDA.

Only the combination is checked here (it runs, images come back whole); what it costs in quality is a property
of real weights, and what it gains is measured by scripts/bench.py --ablate.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

from PIL import Image  # noqa: E402

from localimg.backends.base import EditInputs, GenerationPlan  # noqa: E402
from localimg.backends.device import cuda_capability, resolve_device  # noqa: E402
from localimg.backends.diffusers_backend import DiffusersBackend  # noqa: E402
from localimg.backends.optimizations import set_sdpa_priority  # noqa: E402
from localimg.registry import OptimizeSettings, Registry  # noqa: E402

# What "fast" adds per family on top of the lossless defaults.
EXPECTED_STEP_CACHE = {"tiny-flux": "first_block", "tiny-sd3": "taylorseer", "tiny-sdxl": "off"}


@pytest.mark.parametrize("name", list(EXPECTED_STEP_CACHE))
def test_fast_preset_serves_generations_and_edits(tiny_models_toml: Path, name: str):
    spec = Registry.load(tiny_models_toml).resolve(name)
    assert spec is not None
    set_sdpa_priority("default")
    device = resolve_device("cuda")
    backend = DiffusersBackend(dataclasses.replace(spec, optimize=OptimizeSettings(preset="fast")), device)
    backend.load()  # includes the warm-up (compilation) at the default size
    try:
        applied = backend.optimizations
        assert applied is not None and applied.compile and applied.step_cache == EXPECTED_STEP_CACHE[name]
        capability = cuda_capability(device)
        try:
            import torchao  # noqa: F401

            fp8_expected = capability is not None and capability >= (8, 9)
        except ImportError:
            fp8_expected = False
        assert applied.fp8 == fp8_expected
        preset = spec.quality["medium"]
        size = spec.default_size
        source = Image.new("RGB", (size.width, size.height), (200, 60, 40))
        for edit in (None, EditInputs((source,), strength=0.6)):
            plan = GenerationPlan(
                model=spec.name, prompt="a lighthouse at dawn", width=size.width, height=size.height, steps=8,
                guidance_scale=preset.guidance, seeds=(3, 4), max_sequence_length=preset.max_sequence_length,
                edit=edit,
            )  # fmt: skip
            images = backend.generate([plan])
            assert [image.size for image in images] == [(size.width, size.height)] * 2
            pixels = np.asarray(images[0], dtype=np.float32)
            assert np.isfinite(pixels).all() and pixels.std() > 1.0, "a blank image: NaNs or a broken kernel"
    finally:
        backend.unload()
