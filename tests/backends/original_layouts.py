"""Single-file checkpoints in the layouts operators download, written from a diffusers folder: CompVis's SD 1.5
(`v1-5-pruned-emaonly.safetensors`), Stability's SDXL (`sd_xl_base_1.0.safetensors`) and SD 3.5
(`sd3.5_medium.safetensors`: the MMDiT and the VAE).

The tests load them back through diffusers' own `from_single_file`, so each renaming here is the inverse of one
converter in `diffusers/loaders/single_file_utils.py`: `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
`convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint` and `convert_sd3_transformer_checkpoint_to_diffusers`.
(FLUX's converter only takes FLUX.1's real width, 3072, so no tiny FLUX file can be written in its layout.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

State = dict[str, torch.Tensor]

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's size and pooled-text conditioning
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_MID_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPENCLIP_TOP = {
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}

_MMDIT_TOP = {
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",  # scale and shift swapped
}
_MMDIT_BLOCK = {  # inside transformer_blocks.N / joint_blocks.N
    "attn.to_out.0": "x_block.attn.proj",
    "attn.to_add_out": "context_block.attn.proj",
    "attn.norm_q": "x_block.attn.ln_q",
    "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q",
    "attn.norm_added_k": "context_block.attn.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj",
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "norm1.linear": "x_block.adaLN_modulation.1",
    "norm1_context.linear": "context_block.adaLN_modulation.1",  # in the last block, scale and shift swapped
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}
_MMDIT_FUSED_QKV = {  # q, k and v projections fused in that order, inside a block
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}


def write_original_checkpoint(family: str, folder: Path, out: Path) -> Path:
    """The whole pipeline in `folder` as one file in its family's original layout: `.safetensors`, or a pickle of
    `{"state_dict": ...}` as CompVis saved `.ckpt` files."""
    if family == "sd15":
        state = {
            **_unet(folder),
            **_vae(folder),
            **_clip(_weights(folder, "text_encoder"), "cond_stage_model.transformer."),
        }
    elif family == "sdxl":
        state = {
            **_unet(folder),
            **_vae(folder),
            **_clip(_weights(folder, "text_encoder"), "conditioner.embedders.0.transformer."),
            **_openclip(_weights(folder, "text_encoder_2"), "conditioner.embedders.1.model."),
        }
    elif family == "sd3":
        state = {**_mmdit(folder), **_vae(folder)}
    else:
        raise ValueError(f"no original layout for family {family!r} here")
    state = {name: tensor.contiguous() for name, tensor in state.items()}
    if out.suffix == ".safetensors":
        save_file(state, out, metadata={"format": "pt"})
    else:
        torch.save({"state_dict": state, "global_step": 0}, out)
    return out


def _weights(folder: Path, component: str) -> State:
    state: State = {}
    for file in sorted((folder / component).glob("*.safetensors")):
        state |= load_file(file)
    return state


def _config(folder: Path, component: str) -> dict:
    return json.loads((folder / component / "config.json").read_text())


def _renamed(state: State, rename: Callable[[str], str | None], component: str) -> State:
    renamed = {}
    for name, tensor in state.items():
        new = rename(name)
        if new is None:
            raise KeyError(f"{component}: no original name for {name!r}")
        renamed[new] = tensor
    return renamed


def _prefixed(name: str, table: dict[str, str]) -> str | None:
    for new, old in table.items():
        if name.startswith(new + "."):
            return old + name[len(new) :]
    return None


def _unet(folder: Path) -> State:
    """LDM numbers the UNet's layers flat: `input_blocks` holds conv_in, then per down block its L layers (resnet at
    `.0`, attention at `.1`) and its downsampler; `output_blocks` holds per up block L + 1 layers, the upsampler in
    the last one after its resnet and attention."""
    config = _config(folder, "unet")
    per_block = config["layers_per_block"]
    state = _weights(folder, "unet")
    attended = {int(name.split(".")[1]) for name in state if re.match(r"up_blocks\.\d+\.attentions\.", name)}

    def rename(name: str) -> str | None:
        if top := _prefixed(name, _UNET_TOP):
            return top
        if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            return f"input_blocks.{1 + block * (per_block + 1) + layer}.{_unet_layer(kind, rest)}"
        if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", name):
            return f"input_blocks.{1 + int(m[1]) * (per_block + 1) + per_block}.0.op.{m[2]}"
        if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", name):
            return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
            return f"middle_block.1.{m[1]}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            return f"output_blocks.{block * (per_block + 1) + layer}.{_unet_layer(kind, rest)}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", name):
            block = int(m[1])
            return f"output_blocks.{block * (per_block + 1) + per_block}.{2 if block in attended else 1}.conv.{m[2]}"
        return None

    return {f"model.diffusion_model.{name}": tensor for name, tensor in _renamed(state, rename, "unet").items()}


def _unet_layer(kind: str, rest: str) -> str:
    """A parameter of one LDM block: its resnet is at `.0`, its attention at `.1`."""
    return f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}"


def _resnet(rest: str) -> str:
    resnet = _prefixed(rest, _UNET_RESNET)
    if resnet is None:
        raise KeyError(f"unet: no original name for resnet parameter {rest!r}")
    return resnet


def _vae(folder: Path) -> State:
    """LDM numbers the decoder's up blocks from the bottom, calls a resnet's shortcut `nin_shortcut`, and keeps the
    mid attention's projections as 1x1 convolutions."""
    last_up = len(_config(folder, "vae")["up_block_types"]) - 1
    state = _weights(folder, "vae")

    def rename(name: str) -> str | None:
        name = name.replace("conv_shortcut", "nin_shortcut")
        if re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\..+|(post_)?quant_conv\..+", name):
            return name
        if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", name):
            return f"{m[1]}.norm_out.{m[2]}"
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", name):
            return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", name):
            return f"{m[1]}.mid.attn_1.{_prefixed(m[2], _VAE_MID_ATTENTION)}"
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(.+)", name):
            return f"encoder.down.{m[1]}.block.{m[2]}"
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", name):
            return f"encoder.down.{m[1]}.downsample.{m[2]}"
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(.+)", name):
            return f"decoder.up.{last_up - int(m[1])}.block.{m[2]}"
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", name):
            return f"decoder.up.{last_up - int(m[1])}.upsample.{m[2]}"
        return None

    renamed = _renamed(state, rename, "vae")
    for name, tensor in renamed.items():
        if ".mid.attn_1." in name and tensor.ndim == 2:
            renamed[name] = tensor[:, :, None, None]
    return {f"first_stage_model.{name}": tensor for name, tensor in renamed.items()}


def _mmdit(folder: Path) -> State:
    """Stability's MMDiT names: `joint_blocks.N.x_block` (the image stream) and `.context_block` (the text stream),
    q/k/v fused, and the adaptive norms that follow no other block with their scale and shift halves swapped."""
    state = _weights(folder, "transformer")
    last = max(int(name.split(".")[1]) for name in state if name.startswith("transformer_blocks."))
    out = {"pos_embed": state.pop("pos_embed.pos_embed")}
    for block in range(last + 1):
        ours, theirs = f"transformer_blocks.{block}.", f"joint_blocks.{block}."
        for fused, parts in _MMDIT_FUSED_QKV.items():
            for kind in ("weight", "bias"):
                if f"{ours}{parts[0]}.{kind}" in state:
                    out[f"{theirs}{fused}.{kind}"] = torch.cat([state.pop(f"{ours}{part}.{kind}") for part in parts])

    def rename(name: str) -> str | None:
        if m := re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", name):
            inner = _prefixed(m[2], _MMDIT_BLOCK)
            return None if inner is None else f"joint_blocks.{m[1]}.{inner}"
        return _prefixed(name, _MMDIT_TOP)

    for name, tensor in _renamed(state, rename, "transformer").items():
        swapped = name.startswith(("final_layer.adaLN_modulation.", f"joint_blocks.{last}.context_block.adaLN"))
        out[name] = torch.cat(tensor.chunk(2)[::-1]) if swapped else tensor
    return {f"model.diffusion_model.{name}": tensor for name, tensor in out.items()}


def _wrapped(state: State) -> State:
    """CLIP's names inside `text_model.`, as original checkpoints always have them (transformers 5.6 and later
    leave the wrapper out when they save a `CLIPTextModel`)."""
    return {
        name if name.startswith(("text_model.", "text_projection")) else f"text_model.{name}": tensor
        for name, tensor in state.items()
    }


def _clip(state: State, prefix: str) -> State:
    """OpenAI's CLIP keeps transformers' names under the prefix."""
    return {prefix + name: tensor for name, tensor in _wrapped(state).items()}


def _openclip(state: State, prefix: str) -> State:
    """OpenCLIP's names (SDXL's second encoder): `resblocks`, q/k/v fused into `in_proj`, the text projection as a
    bare tensor stored transposed."""
    state = _wrapped(state)
    out = {prefix + old: state.pop(new) for new, old in _OPENCLIP_TOP.items()}
    out[prefix + "text_projection"] = state.pop("text_projection.weight").T
    layers = sorted({int(m[1]) for name in state if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", name))})
    for layer in layers:
        ours, theirs = f"text_model.encoder.layers.{layer}.", f"{prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            fused = [state.pop(f"{ours}self_attn.{part}_proj.{kind}") for part in "qkv"]
            out[f"{theirs}attn.in_proj_{kind}"] = torch.cat(fused)
            for new, old in _OPENCLIP_LAYER.items():
                out[f"{theirs}{old}.{kind}"] = state.pop(f"{ours}{new}.{kind}")
    left = [name for name in state if not name.endswith("position_ids")]
    if left:
        raise KeyError(f"text_encoder_2: no OpenCLIP name for {left}")
    return out
