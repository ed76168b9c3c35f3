"""The LoRA file format that ComfyUI, A1111 and kohya tools load (kohya `networks.lora`).

A file holds, for each adapted module, `lora_unet_<diffusers module path, . → _>.lora_down.weight`
(rank × in), `.lora_up.weight` (out × rank) and a scalar `.alpha`; the effective weight change is
up @ down × alpha / rank. The safetensors header carries kohya's `ss_*` training metadata, the
`modelspec.*` keys and the `sshs_*` hashes that the webui uses to identify the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from io import BytesIO
from pathlib import Path

import torch

from lora_pipeline.errors import PipelineError
from lora_pipeline.files import atomic_path
from lora_pipeline.media.store import sha256_file

UNET_PREFIX = "lora_unet_"
UNET_TARGET_MODULES = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
]

_PEFT_DOWN = ".lora_A.weight"
_PEFT_UP = ".lora_B.weight"


class LoraFormatError(PipelineError, ValueError):
    """A LoRA file or state dict that is not in the kohya format."""


def _kohya_module_name(peft_module_path: str) -> str:
    # peft may prefix the path with the wrapper's attribute names; kohya names the bare module.
    path = peft_module_path.removeprefix("base_model.model.")
    return UNET_PREFIX + path.replace(".", "_")


def peft_unet_to_kohya(
    state_dict: Mapping[str, torch.Tensor], alpha: float, dtype: torch.dtype = torch.float16
) -> dict[str, torch.Tensor]:
    """Rename a peft UNet LoRA state dict (`get_peft_model_state_dict(unet)`) to kohya keys."""
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.endswith(_PEFT_DOWN):
            module, part = key.removesuffix(_PEFT_DOWN), "lora_down.weight"
        elif key.endswith(_PEFT_UP):
            module, part = key.removesuffix(_PEFT_UP), "lora_up.weight"
        else:
            raise LoraFormatError(
                f"unexpected key {key!r} in the peft state dict: only plain LoRA "
                "(lora_A/lora_B) weights can be written in the kohya format"
            )
        name = _kohya_module_name(module)
        tensor = tensor.detach().to(dtype=dtype)
        # Meta tensors (a UNet built without weights, to check names and shapes) have no data
        # to copy to the CPU.
        tensors[f"{name}.{part}"] = tensor if tensor.is_meta else tensor.cpu().contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    missing = [
        name
        for name in {key.split(".", 1)[0] for key in tensors}
        if f"{name}.lora_down.weight" not in tensors or f"{name}.lora_up.weight" not in tensors
    ]
    if missing:
        raise LoraFormatError(f"modules without both down and up weights: {sorted(missing)[:5]}")
    return tensors


def safetensors_hashes(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> tuple[str, str]:
    """The (sshs_model_hash, sshs_legacy_hash) pair, computed as kohya's train_util does.

    The model hash is the sha256 of the tensor bytes after the safetensors header, so it does not
    change when metadata is edited. The legacy hash is sha256 of 64 KiB at offset 1 MiB (first 8
    hex digits) of the file serialised with the `ss_*` metadata only.
    """
    from safetensors.torch import save

    training_metadata = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    buffer = BytesIO(save(dict(tensors), training_metadata))
    header_length = int.from_bytes(buffer.read(8), "little")
    buffer.seek(8 + header_length)
    model_hash = hashlib.sha256(buffer.read()).hexdigest()
    buffer.seek(0x100000)
    legacy_hash = hashlib.sha256(buffer.read(0x10000)).hexdigest()[:8]
    return model_hash, legacy_hash


def new_session_id() -> int:
    """A kohya `ss_session_id`: random.randint(0, 2**32), as train_network.py draws it."""
    return random.SystemRandom().randint(0, 2**32)


def package_version() -> str:
    try:
        return importlib_metadata.version("lora_pipeline")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _nested_tag_frequency(tag_frequency: Mapping, dataset_dir: str) -> dict[str, dict[str, int]]:
    # kohya groups tag counts by image folder; a flat {tag: count} is one folder's worth.
    if tag_frequency and all(isinstance(v, Mapping) for v in tag_frequency.values()):
        return {
            str(d): {str(t): int(c) for t, c in tags.items()} for d, tags in tag_frequency.items()
        }
    return {dataset_dir: {str(t): int(c) for t, c in tag_frequency.items()}}


def _datasets_json(
    *,
    batch_size: int,
    num_images: int,
    resolution: int,
    tag_frequency: dict,
    dataset_dir: str,
    enable_bucket: bool,
    shuffle_caption: bool,
    keep_tokens: int,
) -> list[dict]:
    return [
        {
            "is_dreambooth": True,
            "batch_size_per_device": batch_size,
            "num_train_images": num_images,
            "num_reg_images": 0,
            "resolution": [resolution, resolution],
            "enable_bucket": enable_bucket,
            "min_bucket_reso": resolution // 2 if enable_bucket else None,
            "max_bucket_reso": resolution * 2 if enable_bucket else None,
            "tag_frequency": tag_frequency,
            "bucket_info": None,
            "resize_interpolation": None,
            "subsets": [
                {
                    "img_count": num_images,
                    "num_repeats": 1,
                    "color_aug": False,
                    "flip_aug": False,
                    "random_crop": False,
                    "shuffle_caption": shuffle_caption,
                    "keep_tokens": keep_tokens,
                    "keep_tokens_separator": "",
                    "secondary_separator": None,
                    "enable_wildcard": False,
                    "caption_prefix": None,
                    "caption_suffix": None,
                    "resize_interpolation": None,
                    "image_dir": dataset_dir,
                    "class_tokens": None,
                    "is_reg": False,
                }
            ],
        }
    ]


def kohya_metadata(
    *,
    base_model_name: str,
    rank: int,
    alpha: float,
    learning_rate: float,
    steps: int,
    epochs: int,
    batch_size: int,
    resolution: int,
    num_images: int,
    seed: int,
    tag_frequency: dict,
    dataset_hash: str,
    base_model_hash: str,
    trigger_word: str,
    title: str,
    base_model_version: str = "sd15",
    enable_bucket: bool = False,
    shuffle_caption: bool = False,
    keep_tokens: int = 0,
    extra: dict | None = None,
) -> dict[str, str]:
    """The safetensors header metadata of a kohya SD1.x / SDXL LoRA, every value a string.

    `tag_frequency` is {tag: count} for one image folder or kohya's {folder: {tag: count}}.
    `base_model_version` is `sd15` or `sdxl` (kohya's `sd_v1` / `sdxl_base_v1-0` and the matching
    modelspec architecture). `extra` adds or overrides keys (the trainer passes
    ss_training_started_at/finished_at, precision, prediction type, optimizer, schedule).
    The `sshs_*` hashes depend on the tensors, so `save_kohya_lora` adds them.
    """
    dataset_dir = f"1_{trigger_word}" if trigger_word else "img"
    frequency = _nested_tag_frequency(tag_frequency, dataset_dir)
    datasets = _datasets_json(
        batch_size=batch_size,
        num_images=num_images,
        resolution=resolution,
        tag_frequency=frequency,
        dataset_dir=dataset_dir,
        enable_bucket=enable_bucket,
        shuffle_caption=shuffle_caption,
        keep_tokens=keep_tokens,
    )
    sdxl = base_model_version == "sdxl"
    now = datetime.now(UTC)
    values: dict[str, object] = {
        "ss_sd_model_name": base_model_name,
        "ss_new_sd_model_hash": base_model_hash,
        "ss_sd_model_hash": "None",
        "ss_base_model_version": "sdxl_base_v1-0" if sdxl else "sd_v1",
        "ss_v2": False,
        "ss_network_module": "networks.lora",
        "ss_network_dim": int(rank),
        "ss_network_alpha": float(alpha),
        "ss_network_dropout": None,
        "ss_learning_rate": float(learning_rate),
        "ss_unet_lr": None,
        "ss_text_encoder_lr": None,
        "ss_lr_scheduler": "constant",
        "ss_lr_warmup_steps": 0,
        "ss_optimizer": "torch.optim.adamw.AdamW",
        "ss_max_grad_norm": 1.0,
        "ss_loss_type": "l2",
        "ss_steps": int(steps),
        "ss_max_train_steps": int(steps),
        "ss_epoch": int(epochs),
        "ss_num_epochs": int(epochs),
        "ss_num_batches_per_epoch": math.ceil(num_images / max(batch_size, 1)),
        "ss_gradient_accumulation_steps": 1,
        "ss_gradient_checkpointing": False,
        "ss_mixed_precision": "no",
        "ss_full_fp16": False,
        "ss_seed": int(seed),
        "ss_num_train_images": int(num_images),
        "ss_num_reg_images": 0,
        "ss_num_validation_images": 0,
        "ss_validation_split": 0.0,
        "ss_clip_skip": None,
        "ss_max_token_length": None,
        "ss_cache_latents": False,
        "ss_enable_bucket": enable_bucket,
        "ss_shuffle_caption": shuffle_caption,
        "ss_keep_tokens": keep_tokens,
        "ss_batch_size_per_device": batch_size,
        "ss_total_batch_size": batch_size,
        "ss_resolution": (resolution, resolution),
        "ss_caption_dropout_rate": 0.0,
        "ss_caption_dropout_every_n_epochs": 0,
        "ss_caption_tag_dropout_rate": 0.0,
        "ss_face_crop_aug_range": None,
        "ss_noise_offset": None,
        "ss_adaptive_noise_scale": None,
        "ss_min_snr_gamma": None,
        "ss_prior_loss_weight": 1.0,
        # Options of kohya's trainer that ours does not use, written with kohya's "off" values so
        # tools that read them find what they expect.
        "ss_debiased_estimation": False,
        "ss_fp8_base": False,
        "ss_fp8_base_unet": False,
        "ss_huber_c": 0.1,
        "ss_huber_scale": 1.0,
        "ss_huber_schedule": "snr",
        "ss_ip_noise_gamma": None,
        "ss_ip_noise_gamma_random_strength": False,
        "ss_lowram": False,
        "ss_max_validation_steps": None,
        "ss_multires_noise_discount": 0.3,
        "ss_multires_noise_iterations": None,
        "ss_noise_offset_random_strength": False,
        "ss_resize_interpolation": None,
        "ss_scale_weight_norms": None,
        "ss_validate_every_n_epochs": None,
        "ss_validate_every_n_steps": None,
        "ss_validation_seed": None,
        "ss_zero_terminal_snr": False,
        "ss_output_name": title,
        "ss_training_comment": f"trigger word: {trigger_word}" if trigger_word else None,
        # Random per run, as kohya draws it: which group of epoch files belongs together (the
        # trainer passes one id for all the files of a run in `extra`).
        "ss_session_id": new_session_id(),
        "ss_tag_frequency": json.dumps(frequency),
        "ss_datasets": json.dumps(datasets),
        "ss_dataset_dirs": json.dumps({dataset_dir: {"n_repeats": 1, "img_count": num_images}}),
        "ss_sd_scripts_commit_hash": "(lora_pipeline)",
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": (
            "stable-diffusion-xl-v1-base/lora" if sdxl else "stable-diffusion-v1/lora"
        ),
        "modelspec.implementation": "diffusers",
        "modelspec.implementation_version": f"lora_pipeline/{package_version()}",
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.prediction_type": "epsilon",
        "modelspec.date": now.strftime("%Y-%m-%dT%H:%M:%S"),
        "lora_pipeline.dataset_hash": dataset_hash,
        "lora_pipeline.base_model_hash": base_model_hash,
        "lora_pipeline.version": package_version(),
    }
    if trigger_word:
        values["modelspec.trigger_phrase"] = trigger_word
        values["lora_pipeline.trigger_word"] = trigger_word
    values.update(extra or {})
    # kohya writes Python's str() of every value: "None", "False", "4", "4.0".
    return {key: str(value) for key, value in values.items()}


def save_kohya_lora(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> str:
    """Write a kohya LoRA file atomically, with its sshs_* hashes; return the file's sha256."""
    from safetensors.torch import save_file

    not_strings = sorted(k for k, v in metadata.items() if not isinstance(v, str))
    if not_strings:
        raise LoraFormatError(f"safetensors metadata values must be strings: {not_strings}")
    if not tensors:
        raise LoraFormatError("refusing to write a LoRA file with no tensors")
    path = Path(path)
    tensors = {name: tensor.contiguous() for name, tensor in tensors.items()}
    model_hash, legacy_hash = safetensors_hashes(tensors, metadata)
    header = {**metadata, "sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=header)
    return sha256_file(path)


def read_kohya_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata of a LoRA file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise LoraFormatError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            metadata = dict(reader.metadata() or {})
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise LoraFormatError(f"{path} is not a readable safetensors file: {error}") from error
    return tensors, metadata
