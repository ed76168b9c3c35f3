"""Write an SD1.x diffusers folder as an original-layout single-file checkpoint (what ComfyUI and
A1111 load), following diffusers' convert_diffusers_to_original_stable_diffusion.py mapping,
generalised to any number of blocks and layers per block (the tiny test model has 2 and 1)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

UNET_TOP = [
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("input_blocks.0.0.", "conv_in."),
    ("out.0.", "conv_norm_out."),
    ("out.2.", "conv_out."),
]
UNET_RESNET = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]
VAE_TOP = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out")]
VAE_ATTENTION = [
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
]


def _unet_layer_map(config: dict) -> list[tuple[str, str]]:
    layers, blocks = config["layers_per_block"], len(config["block_out_channels"])
    stride = layers + 1
    pairs = []
    for i in range(blocks):
        down_attention = config["down_block_types"][i].startswith("CrossAttn")
        for j in range(layers):
            pairs.append((f"input_blocks.{stride * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if down_attention:
                pairs.append(
                    (f"input_blocks.{stride * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}.")
                )
        up_attention = config["up_block_types"][i].startswith("CrossAttn")
        for j in range(layers + 1):
            pairs.append((f"output_blocks.{stride * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if up_attention:
                pairs.append(
                    (f"output_blocks.{stride * i + j}.1.", f"up_blocks.{i}.attentions.{j}.")
                )
        if i < blocks - 1:
            pairs.append(
                (f"input_blocks.{stride * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv.")
            )
            pairs.append(
                (
                    f"output_blocks.{stride * i + layers}.{2 if up_attention else 1}.",
                    f"up_blocks.{i}.upsamplers.0.",
                )
            )
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    pairs += [(f"middle_block.{2 * j}.", f"mid_block.resnets.{j}.") for j in range(2)]
    return pairs


def _unet(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    layer_map = _unet_layer_map(config)
    converted = {}
    for key, tensor in state.items():
        name = key
        for sd, hf in UNET_TOP:
            name = name.replace(hf, sd) if name.startswith(hf) else name
        if "resnets" in name:
            for sd, hf in UNET_RESNET:
                name = name.replace(hf, sd)
        for sd, hf in layer_map:
            name = name.replace(hf, sd)
        converted["model.diffusion_model." + name] = tensor
    return converted


def _vae(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    layers, blocks = config["layers_per_block"], len(config["block_out_channels"])
    pairs = list(VAE_TOP)
    for i in range(blocks):
        pairs += [
            (f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.")
            for j in range(layers)
        ]
        if i < blocks - 1:
            pairs.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            pairs.append((f"up.{blocks - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        pairs += [
            (f"decoder.up.{blocks - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}.")
            for j in range(layers + 1)
        ]
    pairs += [(f"mid.block_{i + 1}.", f"mid_block.resnets.{i}.") for i in range(2)]
    pairs.append(("mid.attn_1.", "mid_block.attentions.0."))
    converted = {}
    for key, tensor in state.items():
        name = key
        for sd, hf in pairs:
            name = name.replace(hf, sd)
        if "attn_1" in name:
            for sd, hf in VAE_ATTENTION:
                name = name.replace(hf, sd)
            if name.endswith((".q.weight", ".k.weight", ".v.weight", ".proj_out.weight")):
                tensor = tensor.reshape(*tensor.shape, 1, 1)  # linear → 1×1 conv
        converted["first_stage_model." + name] = tensor
    return converted


def _text_encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted = {}
    for key, tensor in state.items():
        name = key if key.startswith("text_model.") else "text_model." + key
        converted["cond_stage_model.transformer." + name] = tensor
    return converted


def write_single_file(folder: Path, target: Path) -> Path:
    """The SD1.x pipeline in `folder` as one original-layout .safetensors file at `target`."""

    def weights(part: str) -> dict[str, torch.Tensor]:
        return load_file(next((folder / part).glob("*.safetensors")))

    def config(part: str) -> dict:
        return json.loads((folder / part / "config.json").read_text("utf-8"))

    tensors = {
        **_unet(weights("unet"), config("unet")),
        **_vae(weights("vae"), config("vae")),
        **_text_encoder(weights("text_encoder")),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, target)
    return target
