"""Loading from local folders, a (fake) Hugging Face cache and single files; clear errors when weights are missing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from localimg.backends.base import GenerationPlan
from localimg.backends.device import resolve_device
from localimg.backends.diffusers_backend import DiffusersBackend
from localimg.backends.loading import component_class, load_pipeline, locate_weights, weights_problem
from localimg.errors import ModelUnavailableError
from localimg.registry import ModelSource, ModelSpec, Registry
from tests.backends.original_layouts import write_original_checkpoint

REPO = "acme/tiny-sd15"
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def registry(tiny_models_toml: Path) -> Registry:
    return Registry.load(tiny_models_toml)


@pytest.fixture(scope="module")
def sd15(registry: Registry) -> ModelSpec:
    spec = registry.resolve("tiny-sd15")
    assert spec is not None
    return spec


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sd15: ModelSpec) -> Path:
    """A Hugging Face hub cache holding REPO at commit SHA (branch main), laid out as `hf download` leaves it."""
    assert sd15.source.path is not None
    cache = tmp_path / "hub"
    add_to_cache(cache, REPO, SHA, sd15.source.path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def add_to_cache(cache: Path, repo: str, commit: str, folder: Path, ref: str = "main") -> Path:
    """Put `folder`'s files into the cache as repo@commit: content-addressed blobs, the snapshot's files symlinks
    to them, the ref naming the commit. Returns the snapshot folder."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    snapshot = entry / "snapshots" / commit
    for file in sorted(folder.rglob("*")):
        if not file.is_file():
            continue
        data = file.read_bytes()
        blob = entry / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (entry / "refs").mkdir(exist_ok=True)
    (entry / "refs" / ref).write_text(commit)
    return snapshot


def with_source(spec: ModelSpec, allow_pickle: bool = False, **source: object) -> ModelSpec:
    return dataclasses.replace(spec, source=ModelSource(**source), allow_pickle=allow_pickle)  # type: ignore[arg-type]


def unavailable(spec: ModelSpec, *fragments: str, present: bool = False) -> ModelUnavailableError:
    assert (weights_problem(spec) is None) is present
    with pytest.raises(ModelUnavailableError) as info:
        DiffusersBackend(spec, resolve_device("cpu")).load()
    for fragment in (repr(spec.name), *fragments):
        assert fragment in info.value.message, info.value.message
    return info.value


def generates(spec: ModelSpec) -> bytes:
    """The pixels of one small image the model makes (a fixed prompt and seed)."""
    backend = DiffusersBackend(spec, resolve_device("cpu"))
    backend.load()
    plan = GenerationPlan(
        model=spec.name, prompt="a red fox", width=64, height=64, steps=1, guidance_scale=2.0, seeds=(0,)
    )
    (image,) = backend.generate([plan])
    assert image.size == (64, 64)
    return image.tobytes()


def small_checkpoint(path: Path) -> Path:
    """A whole .safetensors file (for the stand-in pipeline, which reads no tensor of it)."""
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, path)
    return path


def test_importing_backends_forces_offline_mode():
    code = (
        "import os; os.environ['HF_HUB_OFFLINE'] = '0'; import localimg.backends.loading; "
        "import huggingface_hub.constants as c; assert c.HF_HUB_OFFLINE is True; "
        "assert all(os.environ[k] == '1' for k in "
        "('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'HF_HUB_DISABLE_TELEMETRY', 'DISABLE_TELEMETRY'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiny_folders_are_present(registry: Registry):
    for spec in registry:
        assert weights_problem(spec) is None, spec.name
        assert locate_weights(spec).folder == spec.source.path


def test_missing_folder(sd15: ModelSpec, tmp_path: Path):
    error = unavailable(with_source(sd15, path=tmp_path / "nowhere"), str(tmp_path / "nowhere"), "source.path")
    assert error.code == "model_weights_missing"


def test_a_path_to_a_file_in_the_folder_points_at_the_folder(sd15: ModelSpec):
    assert sd15.source.path is not None
    index = sd15.source.path / "model_index.json"
    error = unavailable(with_source(sd15, path=index), f"source.path {index} is a file", "holds model_index.json")
    assert error.code == "model_weights_missing"


def test_folder_without_model_index(sd15: ModelSpec, tmp_path: Path):
    unavailable(with_source(sd15, path=tmp_path), "no model_index.json")


def test_repo_from_cache_by_branch_and_commit(sd15: ModelSpec, hf_cache: Path):
    for revision in ("main", SHA):
        spec = with_source(sd15, repo=REPO, revision=revision)
        assert locate_weights(spec).folder == hf_cache / f"models--acme--tiny-sd15/snapshots/{SHA}"
    generates(spec)


def test_repo_not_in_cache(sd15: ModelSpec, hf_cache: Path):
    error = unavailable(
        with_source(sd15, repo=REPO, revision="v2"),
        f"{REPO}@v2",
        str(hf_cache),
        f"hf download {REPO} --revision v2",
        "source.path",
    )
    assert error.code == "model_weights_missing"
    unavailable(with_source(sd15, repo="acme/other"), "acme/other@main", str(hf_cache))


@pytest.fixture(scope="module")
def pickled_sd15(sd15: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-sd15 re-saved with pickled weights, as older downloads have them: diffusers' components by diffusers, the
    text encoder by hand (transformers 5 writes only .safetensors)."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("pickled") / "tiny-sd15"
    StableDiffusionPipeline.from_pretrained(sd15.source.path).save_pretrained(folder, safe_serialization=False)
    encoder = folder / "text_encoder" / "model.safetensors"
    torch.save(load_file(encoder), encoder.with_name("pytorch_model.bin"))
    encoder.unlink()
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    return folder


def test_pickled_weights_are_refused_by_default(sd15: ModelSpec, pickled_sd15: Path):
    spec = with_source(sd15, path=pickled_sd15)
    error = unavailable(spec, "only pickled weights", "unet, vae", "allow_pickle = true")
    assert error.code == "model_weights_pickled"


def test_pickled_weights_load_when_allowed(
    sd15: ModelSpec, pickled_sd15: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(logging.getLogger("diffusers"), "propagate", True)  # as the server has it
    spec = with_source(sd15, path=pickled_sd15, allow_pickle=True)
    assert locate_weights(spec).chosen.pickled == dict.fromkeys(("text_encoder", "unet", "vae"))
    assert generates(spec) == generates(sd15)
    # A successful load logs no error: diffusers' own fallback to pickles logs one for each component.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "loading pickled weights for text_encoder, unet, vae" in caplog.text


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (["diffusers", "UNet2DConditionModel"], "diffusers.models.unets.unet_2d_condition"),
        (["transformers", "CLIPTextModel"], "transformers.models.clip.modeling_clip"),
        (["stable_diffusion", "StableDiffusionSafetyChecker"], "diffusers.pipelines.stable_diffusion.safety_checker"),
    ],
)
def test_a_model_index_entry_names_its_class(entry: list[str], expected: str):
    """What a pickled component is loaded as: model_index.json names some by diffusers' pipeline module."""
    model_class = component_class(*entry)
    assert (model_class.__module__, model_class.__name__) == (expected, entry[1])


def test_safetensors_are_preferred_over_pickles(sd15: ModelSpec, tmp_path: Path):
    assert sd15.source.path is not None
    folder = shutil.copytree(sd15.source.path, tmp_path / "both")
    # Not a loadable pickle: loading it at all would fail the test.
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not a pickle")
    generates(with_source(sd15, path=folder))


def test_weights_of_another_model_fail_with_the_cause(sd15: ModelSpec, tmp_path: Path):
    """A whole safetensors file that is not this UNet's: only loading can tell."""
    from safetensors.torch import save_file

    assert sd15.source.path is not None
    folder = shutil.copytree(sd15.source.path, tmp_path / "corrupt")
    save_file({"conv_in.weight": torch.zeros(3)}, folder / "unet" / "diffusion_pytorch_model.safetensors")
    error = unavailable(with_source(sd15, path=folder), str(folder), "StableDiffusionPipeline", present=True)
    assert error.code == "model_load_failed"
    assert error.__cause__ is not None


class RecordingPipeline:
    """Stands in for a pipeline class, to record what a single-file load passes it. Its text encoder comes in
    training mode, as some of diffusers' single-file loaders leave one (FLUX's T5)."""

    calls: list[tuple[str, dict[str, object]]] = []

    def __init__(self) -> None:
        self.components = {"text_encoder": torch.nn.Dropout(0.1), "tokenizer": object()}

    @classmethod
    def from_single_file(cls, path: str, **kwargs: object) -> RecordingPipeline:
        cls.calls.append((path, kwargs))
        return cls()


def test_single_file_with_cached_config(sd15: ModelSpec, hf_cache: Path, tmp_path: Path):
    checkpoint = small_checkpoint(tmp_path / "model.safetensors")
    spec = with_source(sd15, file=checkpoint, config=REPO)
    pipeline = load_pipeline(spec, RecordingPipeline, torch.float16)  # type: ignore[arg-type]
    assert not pipeline.components["text_encoder"].training  # served models run inference only
    path, kwargs = RecordingPipeline.calls[-1]
    assert path == str(checkpoint)
    assert kwargs == {
        "config": str(hf_cache / f"models--acme--tiny-sd15/snapshots/{SHA}"),
        "dtype": torch.float16,
        "local_files_only": True,
    }
    # A config repo downloaded at a pinned commit has no refs/main: the source names the commit.
    (hf_cache / "models--acme--tiny-sd15" / "refs" / "main").unlink()
    unavailable(spec, f"{REPO}@main")
    assert locate_weights(with_source(sd15, file=checkpoint, config=REPO, revision=SHA[:7])).folder.name == SHA


def test_single_file_with_config_folder(sd15: ModelSpec, tmp_path: Path):
    checkpoint = small_checkpoint(tmp_path / "model.safetensors")
    spec = with_source(sd15, file=checkpoint, config=str(sd15.source.path))
    load_pipeline(spec, RecordingPipeline, torch.float32)  # type: ignore[arg-type]
    assert RecordingPipeline.calls[-1][1]["config"] == str(sd15.source.path)


def test_single_file_errors(sd15: ModelSpec, tmp_path: Path, hf_cache: Path):
    config = str(sd15.source.path)
    missing = tmp_path / "missing.safetensors"
    unavailable(with_source(sd15, file=missing, config=config), "does not exist", "source.file")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"")
    error = unavailable(with_source(sd15, file=ckpt, config=config), "pickled checkpoint", "allow_pickle = true")
    assert error.code == "model_weights_pickled"
    checkpoint = small_checkpoint(tmp_path / "model.safetensors")
    unavailable(with_source(sd15, file=checkpoint, config="acme/absent"), "acme/absent@main", "hf download acme/absent")
    unavailable(with_source(sd15, file=checkpoint, config=str(tmp_path)), "not a diffusers folder")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(checkpoint.read_bytes()[:-4])
    error = unavailable(with_source(sd15, file=cut, config=config), "is cut short", "copy it again")
    assert error.code == "model_weights_missing"


@pytest.mark.parametrize(
    ("name", "file_name"),
    [
        ("tiny-sd15", "v1-5-pruned-emaonly.safetensors"),
        ("tiny-sd15", "v1-5-pruned-emaonly.ckpt"),
        ("tiny-sdxl", "sd_xl_base_1.0.safetensors"),
    ],
)
def test_a_checkpoint_in_its_original_layout_makes_the_folders_images(
    registry: Registry, tmp_path: Path, name: str, file_name: str
):
    """The files operators download, in CompVis's and Stability's layouts, which diffusers converts as it loads them;
    the config folder holds no weights (`hf download REPO --include "*.json" "*.txt"`)."""
    spec = registry.resolve(name)
    assert spec is not None and spec.source.path is not None
    file = write_original_checkpoint(spec.family, spec.source.path, tmp_path / file_name)
    configs = shutil.copytree(spec.source.path, tmp_path / "configs", ignore=shutil.ignore_patterns("*.safetensors"))
    single = with_source(spec, file=file, config=str(configs), allow_pickle=file.suffix == ".ckpt")
    assert weights_problem(single) is None
    assert generates(single) == generates(spec)


@pytest.mark.parametrize(
    ("name", "layout"), [("tiny-flux", "diffusers"), ("tiny-sd3", "diffusers"), ("tiny-sd3", "original")]
)
def test_a_transformer_single_file_brings_the_transformer_alone(
    registry: Registry, tmp_path: Path, name: str, layout: str
):
    """`flux1-dev.safetensors` holds the transformer alone, `sd3.5_medium.safetensors` the transformer and the VAE:
    the transformer is read from the file, the encoders and the VAE from the config folder. (Black Forest Labs' own
    layout needs FLUX.1's real width to convert, so the FLUX file is in diffusers' layout.)"""
    spec = registry.resolve(name)
    assert spec is not None and spec.source.path is not None
    file = tmp_path / "transformer.safetensors"
    if layout == "original":
        write_original_checkpoint(spec.family, spec.source.path, file)
    else:
        shutil.copy(spec.source.path / "transformer" / "diffusion_pytorch_model.safetensors", file)
    configs = shutil.copytree(spec.source.path, tmp_path / "configs")
    (configs / "transformer" / "diffusion_pytorch_model.safetensors").unlink()  # the file brings it
    single = with_source(spec, file=file, config=str(configs))
    assert locate_weights(single).file_component == "transformer"
    assert generates(single) == generates(spec)
    other = "sd3" if name == "tiny-flux" else "flux"  # the other transformer family's file, found by its tensors
    error = unavailable(dataclasses.replace(single, family=other), str(file), f"declares family = {other!r}")
    assert error.code == "model_kind_mismatch"
    (configs / "text_encoder" / "model.safetensors").unlink()  # `hf download REPO --include "*.json"`
    error = unavailable(with_source(spec, file=file, config=str(configs)), "text_encoder in", "has no weight files")
    assert error.code == "model_weights_missing"


def test_a_flux_file_with_the_other_flux1_models_configs_is_refused_before_loading(registry: Registry, tmp_path: Path):
    """flux1-dev.safetensors beside FLUX.1 schnell's configs (or the reverse) is named before loading; in diffusers'
    layout it would fail with an IndexError from diffusers' converter."""
    from safetensors.torch import load_file, save_file

    flux = registry.resolve("tiny-flux")
    assert flux is not None and flux.source.path is not None
    tensors = load_file(flux.source.path / "transformer" / "diffusion_pytorch_model.safetensors")
    save_file(tensors, dev := tmp_path / "flux1-dev.safetensors")
    save_file(
        {k: v for k, v in tensors.items() if "guidance" not in k}, schnell := tmp_path / "flux1-schnell.safetensors"
    )
    schnell_configs = shutil.copytree(flux.source.path, tmp_path / "configs")
    config = schnell_configs / "transformer" / "config.json"
    config.write_text(config.read_text().replace('"guidance_embeds": true', '"guidance_embeds": false'))
    error = unavailable(with_source(flux, file=dev, config=str(schnell_configs)), "guidance-distilled", str(dev))
    assert error.code == "model_kind_mismatch"
    unavailable(with_source(flux, file=schnell, config=str(flux.source.path)), "without a guidance embedding")
    generates(with_source(flux, file=schnell, config=str(schnell_configs)))  # the pair that agrees loads


def test_a_folder_of_another_family_or_variant_is_refused_before_loading(registry: Registry, tmp_path: Path):
    """diffusers only warns while loading another pipeline's components; every request would then fail."""
    sd15, flux, fill = (registry.resolve(name) for name in ("tiny-sd15", "tiny-flux", "tiny-flux-fill"))
    assert sd15 is not None and flux is not None and fill is not None
    error = unavailable(dataclasses.replace(sd15, family="sdxl"), "StableDiffusionPipeline", "set family = 'sd15'")
    assert error.code == "model_kind_mismatch"
    unavailable(with_source(flux, path=fill.source.path), "FluxFillPipeline", 'set variant = "fill"')
    unavailable(with_source(fill, path=flux.source.path), 'remove variant = "fill"')
    inpainting = shutil.copytree(sd15.source.path, tmp_path / "inpainting")
    config = inpainting / "unet" / "config.json"
    config.write_text(config.read_text().replace('"in_channels": 4', '"in_channels": 9'))
    unavailable(with_source(sd15, path=inpainting), "UNet takes extra input channels")


def test_a_pipeline_saved_without_an_optional_encoder_loads(registry: Registry, tmp_path: Path):
    """SD3 packaged without T5 (model_index.json says `text_encoder_3: [null, null]`), as diffusers saves it."""
    from diffusers import StableDiffusion3Pipeline

    sd3 = registry.resolve("tiny-sd3")
    assert sd3 is not None
    pipeline = StableDiffusion3Pipeline.from_pretrained(str(sd3.source.path), text_encoder_3=None, tokenizer_3=None)
    pipeline.save_pretrained(tmp_path / "no-t5")
    assert '"text_encoder_3": [\n    null' in (tmp_path / "no-t5" / "model_index.json").read_text()
    generates(with_source(sd3, path=tmp_path / "no-t5"))


def test_limits_the_checkpoint_cannot_make_are_refused_before_loading(registry: Registry, tmp_path: Path):
    """Each request at such a size would fail inside the pipeline; the operator hears it up front instead."""
    sd3, flux = registry.resolve("tiny-sd3"), registry.resolve("tiny-flux")
    assert sd3 is not None and flux is not None and flux.source.path is not None
    # tiny-sd3's position embedding covers 128 positions of 2x2 patches of an 8x VAE: 2048 pixels a side.
    too_large = dataclasses.replace(sd3, limits=dataclasses.replace(sd3.limits, max_side=4096))
    error = unavailable(too_large, "at most 2048 pixels a side", "limits.max_side = 4096")
    assert error.code == "model_limits_mismatch"
    # A FLUX whose VAE scales by 16 makes multiples of 32; the API's sizes are multiples of 16.
    coarse = shutil.copytree(flux.source.path, tmp_path / "vae16")
    vae = coarse / "vae" / "config.json"
    config = json.loads(vae.read_text())
    config["block_out_channels"] = [*config["block_out_channels"], config["block_out_channels"][-1]]
    vae.write_text(json.dumps(config))
    unavailable(with_source(flux, path=coarse), "multiples of 32", "limits.multiple_of = 16")
    # limits.multiple_of = 8 on FLUX is fine: every size that reaches the pipeline is a multiple of 16 anyway.
    assert weights_problem(dataclasses.replace(flux, limits=dataclasses.replace(flux.limits, multiple_of=8))) is None


@pytest.fixture(scope="module")
def fp16_only_sd15(sd15: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-sd15 as `hf download <repo> --include "*.fp16.safetensors" "*.json" "*.txt"` leaves it: each component's
    weights only as its fp16 variant."""
    from diffusers import StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("fp16") / "tiny-sd15"
    pipeline = StableDiffusionPipeline.from_pretrained(sd15.source.path, dtype=torch.float16)
    pipeline.save_pretrained(folder, variant="fp16")
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert not (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    return folder


def test_a_folder_of_only_variant_weights_loads_them(sd15: ModelSpec, fp16_only_sd15: Path):
    spec = with_source(sd15, path=fp16_only_sd15)
    weights = locate_weights(spec)
    assert weights.chosen.variant == "fp16" and weights.describe() == f"{fp16_only_sd15} (fp16 weights)"
    generates(spec)


def test_the_plain_weights_load_unless_the_source_names_a_variant(sd15: ModelSpec, tmp_path: Path):
    """A full download has both; `source.variant = "fp16"` reads the half-size files instead."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    assert sd15.source.path is not None
    folder = shutil.copytree(sd15.source.path, tmp_path / "both")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    with torch.no_grad():
        unet.conv_in.bias.fill_(0.25)  # marks the variant's weights apart from the plain ones
    unet.save_pretrained(folder / "unet", variant="fp16")
    plain = load_pipeline(with_source(sd15, path=folder), StableDiffusionPipeline, torch.float32)
    assert not torch.all(plain.unet.conv_in.bias == 0.25)
    chosen = load_pipeline(with_source(sd15, path=folder, variant="fp16"), StableDiffusionPipeline, torch.float32)
    assert torch.all(chosen.unet.conv_in.bias == 0.25)  # the variant where saved, plain weights elsewhere


def test_variant_mistakes_say_what_the_folder_holds(sd15: ModelSpec, fp16_only_sd15: Path, tmp_path: Path):
    assert sd15.source.path is not None
    error = unavailable(
        with_source(sd15, path=sd15.source.path, variant="bf16"),
        "source.variant = 'bf16'",
        "unet: plain",
    )
    assert error.code == "model_weights_missing"
    # Two variants and no plain files: which one is the operator's choice.
    folder = shutil.copytree(fp16_only_sd15, tmp_path / "two")
    for weights in folder.glob("*/*.fp16.safetensors"):
        shutil.copy(weights, weights.with_name(weights.name.replace(".fp16.", ".non_ema.")))
    unavailable(with_source(sd15, path=folder), "text_encoder, unet, vae in", "unet: fp16, non_ema", "source.variant")
    assert locate_weights(with_source(sd15, path=folder, variant="non_ema")).chosen.variant == "non_ema"


def test_only_component_weight_files_name_the_variant(sd15: ModelSpec, fp16_only_sd15: Path, tmp_path: Path):
    """Sharded variant files count, in diffusers' older naming too; what a full download of a Stable Diffusion repo
    holds beside the components does not: single-file checkpoints at its top, other runtimes' copies (OpenVINO's
    .bin is not a pickle), folders model_index.json does not name."""
    folder = shutil.copytree(fp16_only_sd15, tmp_path / "sharded")
    unet = folder / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    unet.rename(unet.with_name("diffusion_pytorch_model.fp16-00001-of-00001.safetensors"))
    vae = folder / "vae" / "diffusion_pytorch_model.fp16.safetensors"
    vae.rename(vae.with_name("diffusion_pytorch_model-00001-of-00001.fp16.safetensors"))
    assert locate_weights(with_source(sd15, path=folder)).chosen.variant == "fp16"
    assert sd15.source.path is not None
    full = shutil.copytree(sd15.source.path, tmp_path / "full")
    (full / "sd_xl_base_1.0.safetensors").write_bytes(b"")
    for name in (
        "unet/openvino_model.xml",
        "unet/openvino_model.bin",
        "unet/diffusion_flax_model.msgpack",
        "vae_decoder/openvino_model.bin",
        "vae_decoder/model.onnx",
        "vae_1_0/diffusion_pytorch_model.bin",
    ):
        (full / name).parent.mkdir(exist_ok=True)
        (full / name).write_bytes(b"")  # fmt: skip
    assert weights_problem(with_source(sd15, path=full)) is None
    assert locate_weights(with_source(sd15, path=full)).chosen.variant is None


def test_a_filtered_hub_download_loads(sd15: ModelSpec, fp16_only_sd15: Path, hf_cache: Path):
    """`hf download REPO --include "*.fp16.safetensors" "*.json"`: huggingface_hub (2.4) calls that snapshot
    incomplete offline, but it holds all the pipeline needs. The commit may be given by its start, as the Hub's
    pages show it."""
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    add_to_cache(hf_cache, "acme/fp16", commit, fp16_only_sd15)
    for revision in ("main", commit, commit[:7]):
        spec = with_source(sd15, repo="acme/fp16", revision=revision)
        weights = locate_weights(spec)
        assert weights.folder.name == commit and weights.chosen.variant == "fp16"
    generates(spec)
    add_to_cache(hf_cache, "acme/fp16", commit[:7] + "0" * 33, fp16_only_sd15, ref="v2")
    error = unavailable(with_source(sd15, repo="acme/fp16", revision=commit[:7]), "start of several cached commits")
    assert error.code == "model_weights_missing"


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def _shard(path: Path) -> None:
    path.rename(path.with_name("diffusion_pytorch_model-00001-of-00002.safetensors"))


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        (("unet", _remove), ["unet/ (in model_index.json) is missing or empty"]),
        (("unet/diffusion_pytorch_model.safetensors", _remove), ["unet in", "has no weight files"]),
        (("scheduler/scheduler_config.json", _remove), ["scheduler/ (in model_index.json) is missing or empty"]),
        (("tokenizer/tokenizer.json", _remove), ["tokenizer has no tokenizer.json or vocab.json"]),
        (("unet/config.json", _remove), ["unet has no config.json"]),
        (("unet/diffusion_pytorch_model.safetensors", _shard), ["lacks diffusion_pytorch_model-00002-of-00002"]),
        (("vae/diffusion_pytorch_model.safetensors", _truncate), ["is cut short", "copy it again"]),
        (("vae/diffusion_pytorch_model.safetensors", lambda path: path.write_bytes(b"")), ["is 0 bytes long"]),
        (("model_index.json", _remove), ["not a diffusers folder"]),
    ],
    ids=["no-unet", "no-unet-weights", "no-scheduler-config", "no-vocabulary", "no-unet-config", "missing-shard",
         "truncated", "empty-file", "no-model-index"],
)  # fmt: skip
def test_an_incomplete_download_names_what_is_missing(
    sd15: ModelSpec, hf_cache: Path, tmp_path: Path, damage, fragments
):
    """Found by file checks, before loading: diffusers' own errors name another folder, and a missing tokenizer
    loads as an empty one, failing every request."""
    relative, harm = damage
    assert sd15.source.path is not None
    folder = shutil.copytree(sd15.source.path, tmp_path / "partial")
    harm(folder / relative)
    snapshot = add_to_cache(hf_cache, "acme/partial", "ab" * 20, folder)
    for spec in (with_source(sd15, path=folder), with_source(sd15, repo="acme/partial")):
        problem = weights_problem(spec)
        assert problem is not None and problem.code == "model_weights_missing"
        for fragment in fragments:
            assert fragment in problem.message, problem.message
    assert str(snapshot) in problem.message


def test_variant_safetensors_are_chosen_over_plain_pickles(
    sd15: ModelSpec, pickled_sd15: Path, fp16_only_sd15: Path, tmp_path: Path
):
    folder = shutil.copytree(pickled_sd15, tmp_path / "pickles-and-fp16")
    for component in ("text_encoder", "unet", "vae"):
        for file in (fp16_only_sd15 / component).glob("*.fp16.safetensors"):
            shutil.copy(file, folder / component)
    assert locate_weights(with_source(sd15, path=folder)).chosen.variant == "fp16"
    generates(with_source(sd15, path=folder))
    assert locate_weights(with_source(sd15, path=folder, allow_pickle=True)).chosen.variant is None
