"""The tiny random-weight pipelines: registered correctly, reloadable offline, safetensors only, and working."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from localimg.registry import Registry
from localimg.testing import tiny

PIPELINE_CLASSES = {
    "tiny-flux": "FluxPipeline",
    "tiny-sd15": "StableDiffusionPipeline",
    "tiny-sdxl": "StableDiffusionXLPipeline",
    "tiny-sd3": "StableDiffusion3Pipeline",
    "tiny-flux-kontext": "FluxKontextPipeline",
    "tiny-flux-fill": "FluxFillPipeline",
}
FAMILIES = {
    "tiny-flux": "flux", "tiny-sd15": "sd15", "tiny-sdxl": "sdxl", "tiny-sd3": "sd3",
    "tiny-flux-kontext": "flux", "tiny-flux-fill": "flux",
}  # fmt: skip
VARIANTS = {"tiny-flux-kontext": "kontext", "tiny-flux-fill": "fill"}


def test_registry_accepts_the_generated_toml(tiny_models_toml: Path) -> None:
    registry = Registry.load(tiny_models_toml)
    assert [spec.name for spec in registry] == list(PIPELINE_CLASSES)
    assert registry.default_model == "tiny-flux"
    for spec in registry:
        assert spec.family == FAMILIES[spec.name]
        assert spec.variant == VARIANTS.get(spec.name, "base")
        assert spec.source.path == (tiny_models_toml.parent / spec.name).resolve()
        assert spec.description.lower().startswith("tiny") and "for tests only" in spec.description
        assert [spec.quality[level].steps for level in ("low", "medium", "high")] == [1, 2, 3]
    for alias in tiny.OPENAI_ALIASES:
        assert registry.resolve(alias).name == "tiny-flux"
    assert registry.resolve("tiny-sd15").default_size.width == 512
    assert registry.resolve("tiny-sd3").quality["medium"].max_sequence_length == 64


@pytest.mark.parametrize("name", list(PIPELINE_CLASSES))
def test_folder_holds_safetensors_only(tiny_models_toml: Path, name: str) -> None:
    folder = tiny_models_toml.parent / name
    weights = {path.suffix for path in folder.rglob("*") if path.suffix in {".safetensors", ".bin", ".pt", ".ckpt"}}
    assert weights == {".safetensors"}


@pytest.mark.parametrize("name", list(PIPELINE_CLASSES))
def test_tokenizers_match_their_text_encoders(tiny_models_toml: Path, name: str) -> None:
    folder = tiny_models_toml.parent / name
    index = json.loads((folder / "model_index.json").read_text())
    tokenizers = {key: value[1] for key, value in index.items() if key.startswith("tokenizer")}
    assert tokenizers
    for component, class_name in tokenizers.items():
        config = json.loads((folder / component / "tokenizer_config.json").read_text())
        tokens = json.loads((folder / component / "tokenizer.json").read_text())["model"]["vocab"]
        encoder = json.loads((folder / component.replace("tokenizer", "text_encoder") / "config.json").read_text())
        assert len(tokens) == encoder["vocab_size"]
        if class_name == "CLIPTokenizer":
            assert config["model_max_length"] == 77 == encoder["max_position_embeddings"]
        else:
            assert config["model_max_length"] >= 256


@pytest.mark.parametrize("name", list(PIPELINE_CLASSES))
def test_pipeline_reloads_offline_and_generates(
    tiny_models_toml: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from diffusers import DiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = DiffusionPipeline.from_pretrained(tiny_models_toml.parent / name, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == PIPELINE_CLASSES[name]
    assert pipe.vae_scale_factor == 8
    extra = {
        # FLUX Fill always repaints a masked image; a white mask over a blank one is text-to-image.
        "tiny-flux-fill": {"image": Image.new("RGB", (320, 256)), "mask_image": Image.new("L", (320, 256), 255)},
        "tiny-flux-kontext": {"max_area": 320 * 256},  # Kontext rescales its output to 1 MP unless told
    }
    images = pipe(
        prompt="a lighthouse on a small island, watercolor",  # Kontext's first parameter is `image`
        **extra.get(name, {}),
        height=256,
        width=320,
        num_inference_steps=2,
        num_images_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
    ).images
    assert [image.size for image in images] == [(320, 256)] * 2
    pixels = np.asarray(images[0], dtype=np.float32)
    assert np.isfinite(pixels).all() and pixels.std() > 1.0


def test_second_build_reuses_the_finished_one(tiny_models_toml: Path) -> None:
    marker = tiny_models_toml.parent / tiny.MARKER
    before = marker.stat().st_mtime_ns
    assert tiny.build_tiny_models(tiny_models_toml.parent) == tiny_models_toml
    assert marker.stat().st_mtime_ns == before


def test_stale_or_interrupted_build_is_rebuilt(tiny_models_toml: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    shutil.copytree(tiny_models_toml.parent, out)
    (out / tiny.MARKER).write_text("tiny-models-0\n")
    (out / ".tiny-flux.partial-1").mkdir()
    shutil.rmtree(out / "tiny-sd3")

    assert tiny.build_tiny_models(out) == out / "models.toml"

    assert (out / tiny.MARKER).read_text() == (tiny_models_toml.parent / tiny.MARKER).read_text()
    assert (out / "tiny-sd3" / "model_index.json").is_file()
    assert not list(out.glob(".*.partial-*"))
    # Fixed seeds: the rebuild is byte-identical to the shared build.
    rebuilt = (out / "tiny-sd3/transformer/diffusion_pytorch_model.safetensors").read_bytes()
    shared = tiny_models_toml.parent / "tiny-sd3/transformer/diffusion_pytorch_model.safetensors"
    assert rebuilt == shared.read_bytes()
