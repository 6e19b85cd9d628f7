"""backends/checkpoint.py: what a diffusers folder's configs say, against its models.toml table (config files
only, as a real checkpoint's are; no weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localimg.backends.checkpoint import check_checkpoint, check_file_kind, size_rule
from localimg.errors import ModelUnavailableError
from localimg.registry import Registry


def checkpoint(folder: Path, class_name: str | None, **configs: dict) -> Path:
    """A folder with model_index.json and the given `<component>/config.json` files."""
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name} if class_name else {}))
    for component, config in configs.items():
        (folder / component).mkdir()
        (folder / component / "config.json").write_text(json.dumps(config))
    return folder


def spec(folder: Path, family: str, **table: object):
    registry = Registry.from_dict({"models": {"m": {"family": family, "source": {"path": str(folder)}, **table}}},
                                  base_dir=Path("/"))  # fmt: skip
    return registry.resolve("m")


VAE8 = {"block_out_channels": [128, 256, 512, 512]}


@pytest.mark.parametrize(
    ("class_name", "transformer", "variant"),
    [
        ("FluxPipeline", {"in_channels": 64}, "base"),
        ("FluxKontextPipeline", {"in_channels": 64, "out_channels": 64}, "kontext"),
        ("FluxKontextPipeline", {"in_channels": 64, "out_channels": None}, "kontext"),
        ("FluxFillPipeline", {"in_channels": 384, "out_channels": 64}, "fill"),
        ("FluxPipeline", {"out_channels": 64}, "base"),  # in_channels left at the model's default, 64
        (None, {"in_channels": 64}, "base"),  # no class named: the configs decide
    ],
)
def test_checkpoints_that_match_their_table_pass(tmp_path: Path, class_name, transformer, variant):
    folder = checkpoint(tmp_path / "m", class_name, transformer=transformer, vae=VAE8)
    check_checkpoint(spec(folder, "flux", variant=variant), folder)


@pytest.mark.parametrize(
    ("class_name", "family", "table", "configs", "fragments"),
    [
        ("StableDiffusionXLPipeline", "sd15", {}, {"unet": {"in_channels": 4}}, ["a sdxl model", "family = 'sdxl'"]),
        ("FluxFillPipeline", "flux", {}, {"transformer": {"in_channels": 384, "out_channels": 64}},
         ['set variant = "fill"']),
        ("FluxPipeline", "flux", {"variant": "fill"}, {"transformer": {"in_channels": 64}},
         ['remove variant = "fill"']),
        ("FluxControlPipeline", "flux", {"variant": "fill"}, {"transformer": {"in_channels": 128, "out_channels": 64}},
         ["FluxControlPipeline", "inputs localimg does not send"]),
        ("FluxKontextPipeline", "flux", {}, {"transformer": {"in_channels": 64}},
         ["(FLUX.1 Kontext)", "set 'kontext'"]),
        ("FluxPipeline", "flux", {"variant": "kontext"}, {"transformer": {"in_channels": 64}},
         ["not FLUX.1 Kontext", "variant = 'kontext'; remove it"]),
        ("StableDiffusionPipeline", "sd15", {}, {"unet": {"in_channels": 9}}, ["extra input channels"]),
        (None, "sdxl", {}, {"unet": {"in_channels": 8}}, ["pipeline of unnamed class", "pix2pix"]),
    ],
)  # fmt: skip
def test_another_kind_of_checkpoint_is_refused_with_the_setting_to_change(
    tmp_path: Path, class_name, family, table, configs, fragments
):
    folder = checkpoint(tmp_path / "m", class_name, **configs)
    with pytest.raises(ModelUnavailableError) as info:
        check_checkpoint(spec(folder, family, **table), folder)
    assert info.value.code == "model_kind_mismatch"
    for fragment in fragments:
        assert fragment in info.value.message


def test_the_size_rule_comes_from_the_vae_and_the_denoiser(tmp_path: Path):
    flux = checkpoint(tmp_path / "flux", "FluxPipeline", vae=VAE8)
    assert size_rule("flux", flux).multiple == 16 and size_rule("flux", flux).max_side is None
    sd3 = checkpoint(tmp_path / "sd3", "StableDiffusion3Pipeline", vae=VAE8, transformer={"patch_size": 2,
                     "pos_embed_max_size": 192})  # fmt: skip
    assert (size_rule("sd3", sd3).multiple, size_rule("sd3", sd3).max_side) == (16, 3072)  # SD3 medium
    tiny = checkpoint(tmp_path / "tiny", "StableDiffusion3Pipeline", vae={"block_out_channels": [4]},
                      transformer={"patch_size": 1})  # fmt: skip
    assert (size_rule("sd3", tiny).multiple, size_rule("sd3", tiny).max_side) == (1, 96)  # the model's default
    assert size_rule("sd15", checkpoint(tmp_path / "novae", "StableDiffusionPipeline")) is None


def test_limits_are_checked_against_what_reaches_the_pipeline(tmp_path: Path):
    vae16 = {"block_out_channels": [64, 64, 64, 64, 64]}
    folder = checkpoint(tmp_path / "m", "FluxPipeline", vae=vae16, transformer={"in_channels": 64})
    with pytest.raises(ModelUnavailableError, match="multiples of 32") as info:
        check_checkpoint(spec(folder, "flux"), folder)
    assert info.value.code == "model_limits_mismatch"
    check_checkpoint(spec(folder, "flux", limits={"multiple_of": 32}), folder)
    sd15 = checkpoint(tmp_path / "sd15", "StableDiffusionPipeline", vae=VAE8, unet={"in_channels": 4})
    check_checkpoint(spec(sd15, "sd15", limits={"multiple_of": 8}), sd15)  # sizes are multiples of 16 anyway


def test_a_single_files_configs_may_be_another_variants_of_the_same_shape(tmp_path: Path):
    """FLUX.1 Kontext's single file is commonly served with FLUX.1 dev's configs: only the class differs."""
    folder = checkpoint(tmp_path / "m", "FluxPipeline", transformer={"in_channels": 64}, vae=VAE8)
    check_checkpoint(spec(folder, "flux", variant="kontext"), folder, single_file=True)


# A few tensor names of each single-file layout, as the published files name them.
LAYOUTS = {
    "sd15 (LDM)": ("sd15", ["model.diffusion_model.input_blocks.0.0.weight",
                            "first_stage_model.decoder.conv_in.weight",
                            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]),
    "sdxl (LDM)": ("sdxl", ["model.diffusion_model.input_blocks.0.0.weight",
                            "model.diffusion_model.label_emb.0.0.weight",
                            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                            "conditioner.embedders.1.model.ln_final.weight"]),
    "flux (Black Forest Labs)": ("flux", ["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"]),
    "flux (ComfyUI)": ("flux", ["model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
                                "vae.decoder.conv_in.weight",
                                "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight"]),
    "flux (diffusers)": ("flux", ["transformer_blocks.0.attn.add_q_proj.weight",
                                  "single_transformer_blocks.0.proj_out.weight", "x_embedder.weight"]),
    "sd3 (Stability)": ("sd3", ["model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight",
                                "model.diffusion_model.pos_embed", "first_stage_model.decoder.conv_in.weight",
                                "text_encoders.clip_g.transformer.text_model.final_layer_norm.weight"]),
    "sd3 (diffusers)": ("sd3", ["transformer_blocks.0.attn.add_q_proj.weight", "pos_embed.proj.weight"]),
}  # fmt: skip


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("declared", ["sd15", "sdxl", "flux", "sd3"])
def test_a_single_file_of_another_family_is_refused_by_its_tensor_names(tmp_path: Path, layout: str, declared: str):
    family, names = LAYOUTS[layout]
    file = tmp_path / "model.safetensors"
    if declared == family:
        check_file_kind(spec(tmp_path, declared), file, frozenset(names), tmp_path)
        return
    with pytest.raises(ModelUnavailableError) as caught:
        check_file_kind(spec(tmp_path, declared), file, frozenset(names), tmp_path)
    assert caught.value.code == "model_kind_mismatch"
    for fragment in (str(file), f"holds a checkpoint of family {family}", f"declares family = {declared!r}"):
        assert fragment in caught.value.message


@pytest.mark.parametrize("declared", ["sd15", "sdxl", "flux", "sd3"])
def test_tensor_names_that_no_family_owns_say_nothing(tmp_path: Path, declared: str):
    file = tmp_path / "model.safetensors"
    names = frozenset({"weight", "first_stage_model.decoder.conv_in.weight"})
    check_file_kind(spec(tmp_path, declared), file, names, tmp_path)
    unet_alone = frozenset({"model.diffusion_model.input_blocks.0.0.weight"})  # SD 1.5 or XL: it does not say
    if declared in ("sd15", "sdxl"):
        check_file_kind(spec(tmp_path, declared), file, unet_alone, tmp_path)
    else:
        with pytest.raises(ModelUnavailableError, match="holds a checkpoint of family sd15 or sdxl"):
            check_file_kind(spec(tmp_path, declared), file, unet_alone, tmp_path)


FLUX_BLOCKS = ["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"]
DEV_FILES = {  # FLUX.1 dev's guidance embedding, as each layout names it
    "Black Forest Labs": [*FLUX_BLOCKS, "guidance_in.in_layer.weight"],
    "ComfyUI": [f"model.diffusion_model.{name}" for name in (*FLUX_BLOCKS, "guidance_in.in_layer.weight")],
    "diffusers": ["single_transformer_blocks.0.proj_out.weight", "time_text_embed.guidance_embedder.linear_1.weight"],
}


@pytest.mark.parametrize("layout", list(DEV_FILES))
def test_a_flux_file_must_be_the_transformer_its_configs_describe(tmp_path: Path, layout: str):
    """flux1-dev.safetensors with FLUX.1 schnell's configs, or the reverse: diffusers would drop the guidance
    embedding with a warning, leave it unloaded or fail in its converter, depending on the way round and layout."""
    dev_names = frozenset(DEV_FILES[layout])
    schnell_names = frozenset(name for name in dev_names if "guidance" not in name)
    file = tmp_path / "flux1.safetensors"
    dev = checkpoint(tmp_path / "dev", "FluxPipeline", transformer={"guidance_embeds": True})
    schnell = checkpoint(tmp_path / "schnell", "FluxPipeline", transformer={"guidance_embeds": False})
    check_file_kind(spec(dev, "flux"), file, dev_names, dev)
    check_file_kind(spec(schnell, "flux"), file, schnell_names, schnell)
    with pytest.raises(ModelUnavailableError, match="guidance-distilled FLUX.1 transformer") as caught:
        check_file_kind(spec(schnell, "flux"), file, dev_names, schnell)
    assert caught.value.code == "model_kind_mismatch" and "guidance_embeds = false" in caught.value.message
    with pytest.raises(ModelUnavailableError, match="without a guidance embedding") as caught:
        check_file_kind(spec(dev, "flux"), file, schnell_names, dev)
    assert "FLUX.1-schnell's configs" in caught.value.message
    # A config without the key is FluxTransformer2DModel's default: no guidance embedding.
    unsaid = checkpoint(tmp_path / "unsaid", "FluxPipeline", transformer={"in_channels": 64})
    check_file_kind(spec(unsaid, "flux"), file, schnell_names, unsaid)
    with pytest.raises(ModelUnavailableError, match="guidance-distilled"):
        check_file_kind(spec(unsaid, "flux"), file, dev_names, unsaid)
