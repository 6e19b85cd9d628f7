"""On a CUDA GPU: localimg's lossless optimizations keep the image of plain diffusers on the same seed.

Skipped without CUDA. Uses the tiny models at bf16 (the optimizations' code paths, compile included, are the same
as on the full-size ones, and this runs in a minute); scripts/bench.py measures the full-size speed.
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

from localimg.backends.base import GenerationPlan  # noqa: E402
from localimg.backends.device import resolve_device  # noqa: E402
from localimg.backends.diffusers_backend import DiffusersBackend  # noqa: E402
from localimg.backends.optimizations import set_sdpa_priority  # noqa: E402
from localimg.registry import OptimizeSettings, Registry  # noqa: E402

# bf16 outputs of differently fused/compiled kernels differ by rounding; on 0..255 pixels a few levels at most
# in a handful of places. The mean absolute difference is the tight bound; the max guards against artefacts.
MEAN_TOLERANCE = 1.0
MAX_TOLERANCE = 16

LOSSLESS = {
    "attention": OptimizeSettings(preset="off", attention="cudnn"),
    "fuse_qkv": OptimizeSettings(preset="off", fuse_qkv=True),
    "channels_last": OptimizeSettings(preset="off", channels_last=True),
    "sync_free": OptimizeSettings(preset="off", sync_free=True),
    "compile": OptimizeSettings(preset="off", compile=True, compile_vae=True, warmup_sizes=()),
    "default": OptimizeSettings(warmup_sizes=()),  # everything localimg turns on by default on CUDA
}


def run(spec, settings: OptimizeSettings) -> np.ndarray:
    set_sdpa_priority("default")
    backend = DiffusersBackend(dataclasses.replace(spec, optimize=settings), resolve_device("cuda"))
    backend.load()
    preset = spec.quality["medium"]
    plan = GenerationPlan(
        model=spec.name, prompt="a lighthouse at dawn", width=256, height=256, steps=4,
        guidance_scale=preset.guidance, seeds=(7,), max_sequence_length=preset.max_sequence_length,
    )  # fmt: skip
    backend.generate([plan])  # compile / graph capture
    (image,) = backend.generate([plan])
    backend.unload()
    return np.asarray(image, dtype=np.float32)


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd15", "tiny-sdxl", "tiny-sd3"])
@pytest.mark.parametrize("option", list(LOSSLESS))
def test_lossless_option_matches_plain(tiny_models_toml: Path, name: str, option: str):
    spec = Registry.load(tiny_models_toml).resolve(name)
    assert spec is not None
    plain = run(spec, OptimizeSettings(preset="off"))
    optimized = run(spec, LOSSLESS[option])
    difference = np.abs(optimized - plain)
    assert difference.mean() <= MEAN_TOLERANCE and difference.max() <= MAX_TOLERANCE, (
        f"{option}: mean {difference.mean():.3f}, max {difference.max():.0f}"
    )


def test_cuda_graphs_replay_on_each_engines_own_thread(tiny_models_toml: Path):
    # Each engine loads and generates on its own worker thread. torch < 2.13 set CUDA-graph trees up in the thread
    # that imported them only (pytorch/pytorch#123177): the second model in a process failed with AssertionError.
    import threading

    spec = Registry.load(tiny_models_toml).resolve("tiny-sd15")
    assert spec is not None
    images: list[np.ndarray] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            images.append(run(spec, OptimizeSettings(cuda_graphs=True, warmup_sizes=())))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below, on the test's thread
            errors.append(exc)

    for _ in range(2):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert not errors, errors
    difference = np.abs(images[0] - images[1])
    assert difference.mean() <= MEAN_TOLERANCE and difference.max() <= MAX_TOLERANCE
