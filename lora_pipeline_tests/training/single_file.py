"""Write an SD1.x or SDXL diffusers folder as an original-layout (ldm/sgm) single-file
checkpoint (what ComfyUI and A1111 load), following the mapping of diffusers'
convert_diffusers_to_original_stable_diffusion.py, generalised to any number of blocks and layers
per block (the tiny test models have 2 and 1). SDXL keeps CLIP-L under
`conditioner.embedders.0.transformer.` and its second encoder in OpenCLIP's own names under
`conditioner.embedders.1.model.` (the reverse of diffusers' `convert_open_clip_checkpoint`: fused
q/k/v, `resblocks`, a transposed `text_projection`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

UNET_TOP = [
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("input_blocks.0.0.", "conv_in."),
    ("out.0.", "conv_norm_out."),
    ("out.2.", "conv_out."),
    # SDXL's text-time embedding (no such weights in SD1.x)
    ("label_emb.0.0.", "add_embedding.linear_1."),
    ("label_emb.0.2.", "add_embedding.linear_2."),
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


def _text_encoder(
    state: dict[str, torch.Tensor], prefix: str = "cond_stage_model.transformer."
) -> dict[str, torch.Tensor]:
    converted = {}
    for key, tensor in state.items():
        name = key if key.startswith("text_model.") else "text_model." + key
        converted[prefix + name] = tensor
    return converted


SDXL_CLIP_L = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP = "conditioner.embedders.1.model."
OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
OPEN_CLIP_LAYER = [
    ("self_attn.out_proj.", "attn.out_proj."),
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
]
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)")


def _open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection in OpenCLIP's names: q, k and v of each layer fused into
    one in_proj (in that order), the projection stored as a matrix to multiply by (transposed)."""
    converted, fused = {}, {}
    for key, tensor in state.items():
        name = key.removeprefix("text_model.")
        if name.endswith("position_ids"):
            continue  # a buffer, not a weight; OpenCLIP has none
        if name == "text_projection.weight":
            converted["text_projection"] = tensor.T
            continue
        if name in OPEN_CLIP_TOP:
            converted[OPEN_CLIP_TOP[name]] = tensor
            continue
        layer = _LAYER.fullmatch(name)
        if layer is None:
            raise ValueError(f"no OpenCLIP name for text_encoder_2 weight {key}")
        index, rest = layer.groups()
        qkv = _QKV.fullmatch(rest)
        if qkv:
            fused.setdefault((index, qkv[2]), {})[qkv[1]] = tensor
            continue
        for ours, theirs in OPEN_CLIP_LAYER:
            rest = rest.replace(ours, theirs)
        converted[f"transformer.resblocks.{index}.{rest}"] = tensor
    for (index, kind), parts in fused.items():
        converted[f"transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]]
        )
    return {SDXL_OPEN_CLIP + name: tensor for name, tensor in converted.items()}


def _weights(folder: Path, part: str) -> dict[str, torch.Tensor]:
    return load_file(next((folder / part).glob("*.safetensors")))


def _config(folder: Path, part: str) -> dict:
    return json.loads((folder / part / "config.json").read_text("utf-8"))


def _save(tensors: dict[str, torch.Tensor], target: Path) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, target)
    return target


def write_single_file(folder: Path, target: Path) -> Path:
    """The SD1.x pipeline in `folder` as one original-layout .safetensors file at `target`."""
    return _save(
        {
            **_unet(_weights(folder, "unet"), _config(folder, "unet")),
            **_vae(_weights(folder, "vae"), _config(folder, "vae")),
            **_text_encoder(_weights(folder, "text_encoder")),
        },
        target,
    )


def write_sdxl_single_file(folder: Path, target: Path) -> Path:
    """The SDXL pipeline in `folder` as one sgm-layout .safetensors file at `target` (CLIP-L
    with its text_model. segment, as the released SDXL base file has it)."""
    return _save(
        {
            **_unet(_weights(folder, "unet"), _config(folder, "unet")),
            **_vae(_weights(folder, "vae"), _config(folder, "vae")),
            **_text_encoder(_weights(folder, "text_encoder"), SDXL_CLIP_L),
            **_open_clip(_weights(folder, "text_encoder_2")),
        },
        target,
    )
