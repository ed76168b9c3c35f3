"""Single-file Stable Diffusion checkpoints (what ComfyUI and A1111 users have), every common
layout, loaded offline.

The layouts seen in the wild, all of which ComfyUI and kohya load:
- SD1.x: `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE) and the CLIP text encoder
  under `cond_stage_model.transformer.text_model.*`, or under `cond_stage_model.transformer.*`
  without the `text_model.` segment (some converters, and state dicts of transformers 5, whose
  CLIPTextModel has none);
- SDXL: `conditioner.embedders.0.transformer.*` (CLIP-L, with or without `text_model.`) and
  `conditioner.embedders.1.model.*` (OpenCLIP bigG);
- weights in fp16, bf16 or fp32, loaded in the dtype asked for;
- pruned files (only the weights inference needs) and EMA-only files (the EMA weights stored as
  the model's), the usual downloads; full training files that also carry `model_ema.*` use the
  model's own weights, as ComfyUI and kohya do;
- `.ckpt` pickles, their weights under `state_dict` or not (read with `weights_only`).

diffusers' `from_single_file` reads the common layout but not the text encoder without
`text_model.` ("Failed to load CLIPTextModel"): that encoder is built here from the config folder
and handed to it. `checkpoint_layout` reads only the safetensors header, so telling SD1.5 from
SDXL costs no load; a file that is none of these is refused in one line naming what is missing.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_pipeline.errors import PipelineError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# Larger headers are not safetensors headers (the format caps them at 100 MB).
SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# Where each version keeps the CLIP-L text encoder diffusers calls `text_encoder`.
CLIP_PREFIXES = {
    "sd15": "cond_stage_model.transformer.",
    "sdxl": "conditioner.embedders.0.transformer.",
}
# SDXL keeps its text encoders in a conditioner; the base model's second one is OpenCLIP bigG.
SDXL_CONDITIONER = "conditioner.embedders."
SDXL_MARKER = "conditioner.embedders.1."
# The SDXL refiner's only text encoder is OpenCLIP bigG, stored as the first embedder.
SDXL_REFINER_MARKER = "conditioner.embedders.0.model."
SD2_MARKER = "cond_stage_model.model."
DTYPE_NAMES = {"F16": "fp16", "BF16": "bf16", "F32": "fp32", "F64": "fp64"}


class CheckpointError(PipelineError, ValueError):
    """A single-file checkpoint this pipeline cannot load; the message says why, in one line."""


@dataclass(frozen=True)
class CheckpointLayout:
    version: str  # "sd15" or "sdxl"
    # The CLIP-L keys carry no `text_model.` segment (diffusers cannot read them alone).
    clip_without_text_model: bool
    # The file also holds EMA weights (`model_ema.*`); the model's own are used.
    has_ema: bool
    # The dtype most UNet weights are stored in: fp16, bf16, fp32 ("unknown" for a .ckpt).
    dtype: str


def checkpoint_keys(path: Path) -> dict[str, str]:
    """The tensor names of a checkpoint, each with its stored dtype ("" where unknown).

    A safetensors file is read from its header alone; a .ckpt pickle is loaded (weights only)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        try:
            with path.open("rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                if length > SAFETENSORS_HEADER_LIMIT:
                    raise ValueError(f"header of {length} bytes")
                header = json.loads(handle.read(length))
        except (OSError, ValueError, struct.error) as error:
            raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from error
        if not isinstance(header, dict):
            raise CheckpointError(f"{path} is not a readable safetensors file: no tensor table")
        return {
            key: DTYPE_NAMES.get(str(value.get("dtype")), str(value.get("dtype")))
            for key, value in header.items()
            if key != "__metadata__" and isinstance(value, dict)
        }
    return {key: "" for key in _ckpt_state_dict(path)}


def _ckpt_state_dict(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, EOFError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a loadable .ckpt checkpoint: {first}") from error
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a loadable .ckpt checkpoint: no state dict inside")
    return state


def checkpoint_layout(path: Path) -> CheckpointLayout:
    """What a single-file checkpoint holds; CheckpointError naming what is missing otherwise."""
    path = Path(path)
    keys = checkpoint_keys(path)
    if any(key.startswith(SD2_MARKER) for key in keys):
        raise CheckpointError(
            f"{path} is a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder under "
            "cond_stage_model.model.): only SD1.x and SDXL are supported"
        )
    unet = [key for key in keys if key.startswith(UNET_PREFIX)]
    if not unet:
        ema = any(key.startswith("model_ema.") for key in keys)
        raise CheckpointError(
            f"{path} has no UNet weights (model.diffusion_model.*)"
            + (
                ": it holds only kohya-flattened EMA weights (model_ema.*); save the EMA "
                "weights as the model's (an 'ema-only' file) to use it"
                if ema
                else ": it is not a Stable Diffusion checkpoint (a LoRA, a VAE or another model?)"
            )
        )
    if not any(key.startswith(VAE_PREFIX) for key in keys):
        raise CheckpointError(
            f"{path} has no VAE weights (first_stage_model.*): a checkpoint without its VAE "
            "cannot be used on its own"
        )
    version = "sdxl" if any(key.startswith(SDXL_CONDITIONER) for key in keys) else "sd15"
    if version == "sdxl":
        _check_sdxl_encoders(path, keys)
    clip = CLIP_PREFIXES[version]
    if not any(key.startswith(clip) for key in keys):
        raise CheckpointError(
            f"{path} has no CLIP text encoder weights ({clip}*): a checkpoint without its text "
            "encoder cannot be used on its own"
        )
    with_segment = any(key.startswith(clip + "text_model.") for key in keys)
    stored = [keys[key] for key in unet if keys[key]]
    dtype = max(set(stored), key=stored.count) if stored else "unknown"
    return CheckpointLayout(
        version=version,
        clip_without_text_model=not with_segment,
        has_ema=any(key.startswith("model_ema.") for key in keys),
        dtype=dtype,
    )


def _check_sdxl_encoders(path: Path, keys: dict[str, str]) -> None:
    """An SDXL base file has both text encoders; a refiner, or a file missing one, is refused
    here rather than taken for SD1.5 or loaded with a half-missing conditioner."""
    if any(key.startswith(SDXL_REFINER_MARKER) for key in keys):
        raise CheckpointError(
            f"{path} is an SDXL refiner (one OpenCLIP text encoder, {SDXL_REFINER_MARKER}*): "
            "a refiner only finishes images, it is no base model for LoRA training or "
            "generation; use the SDXL base checkpoint"
        )
    if not any(key.startswith(SDXL_MARKER) for key in keys):
        raise CheckpointError(
            f"{path} is an SDXL checkpoint without its second text encoder (OpenCLIP bigG, "
            f"{SDXL_MARKER}model.*): a checkpoint without it cannot be used on its own"
        )


def is_sdxl_checkpoint(path: Path) -> bool:
    """Whether a single-file checkpoint is SDXL (False for anything not a readable one).

    Only its key names decide, not whether it is complete: choosing the training defaults must
    not fail where loading it would give the clearer error."""
    try:
        return any(key.startswith(SDXL_CONDITIONER) for key in checkpoint_keys(Path(path)))
    except CheckpointError:
        return False


def _tensors_with_prefix(path: Path, prefix: str) -> dict[str, Any]:
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as reader:
            return {
                key[len(prefix) :]: reader.get_tensor(key)
                for key in reader.keys()  # noqa: SIM118 - a safe_open reader is no dict
                if key.startswith(prefix)
            }
    state = _ckpt_state_dict(path)
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def clip_text_encoder(path: Path, prefix: str, config_dir: Path, dtype: Any) -> Any:
    """The CLIP-L text encoder stored under `prefix` (with or without `text_model.`), built
    from the config in `config_dir`, its weights loaded exactly (every key used, none missing)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(str(config_dir))
    model = CLIPTextModel(config)
    wanted = model.state_dict()
    # transformers 4 names the weights text_model.*, transformers 5 without the segment: map
    # the file's names onto whichever this transformers uses.
    model_has_segment = next(iter(wanted)).startswith("text_model.")
    tensors = {}
    for key, tensor in _tensors_with_prefix(path, prefix).items():
        bare = key.removeprefix("text_model.")
        tensors["text_model." + bare if model_has_segment else bare] = tensor
    # position_ids is a buffer some files carry and some transformers versions do not.
    tensors = {k: v for k, v in tensors.items() if k in wanted or not k.endswith("position_ids")}
    missing = sorted(set(wanted) - set(tensors) - {k for k in wanted if k.endswith("position_ids")})
    unexpected = sorted(set(tensors) - set(wanted))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(
            f"{path}: its text encoder ({prefix}*) does not match the CLIP config in "
            f"{config_dir}: {detail}"
        )
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(wanted[key].shape):
            raise CheckpointError(
                f"{path}: text encoder weight {key} has shape {tuple(tensor.shape)}, the CLIP "
                f"config in {config_dir} wants {tuple(wanted[key].shape)}"
            )
    model.load_state_dict(tensors, strict=False)
    return model.to(dtype=dtype).eval()
