"""The diffusers config files that describe an SD1.5 or SDXL single-file checkpoint, offline.

A `.safetensors` checkpoint (what ComfyUI users have) holds weights but no configs; diffusers'
`from_single_file` fetches them from the hub unless it is given a config folder. `sd15/` and
`sdxl/` are those folders for runwayml/stable-diffusion-v1-5 and
stabilityai/stable-diffusion-xl-base-1.0: model_index.json, unet/, vae/, text_encoder(_2)/ and
scheduler/ configs.

The CLIP tokenizer cannot be derived from a checkpoint (its vocabulary is not in the weights) and
is not shipped here: `config_folder_for` combines the shipped configs with a tokenizer folder the
studio already has (vocab.json + merges.txt; ComfyUI ships one as `comfy/sd1_tokenizer/`, and SDXL
uses the same vocabulary for both encoders) into a complete folder under a cache directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from lora_pipeline.errors import PipelineError
from lora_pipeline.files import atomic_folder
from lora_pipeline.training.defaults import detect_base_model_version

SHIPPED = Path(__file__).resolve().parent
TOKENIZER_FILES = ("vocab.json", "merges.txt")
TOKENIZER_MAX_LENGTH = 77
# SDXL's second tokenizer pads with "!" (as OpenCLIP did when SDXL was trained).
PAD_TOKENS = {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"}


class ModelConfigError(PipelineError, ValueError):
    """A tokenizer folder or base model version that cannot make a config folder."""


def shipped_config(version: str) -> Path:
    """The shipped config folder of `sd15` or `sdxl` (no tokenizer inside)."""
    folder = SHIPPED / version
    if not (folder / "model_index.json").is_file():
        raise ModelConfigError(f"no shipped configs for base model version {version!r}")
    return folder


def _check_tokenizer_dir(tokenizer_dir: Path) -> None:
    missing = [name for name in TOKENIZER_FILES if not (tokenizer_dir / name).is_file()]
    if missing:
        raise ModelConfigError(
            f"{tokenizer_dir} is not a CLIP tokenizer folder (missing {', '.join(missing)}); "
            "point the tokenizer setting at one, e.g. ComfyUI's comfy/sd1_tokenizer"
        )


def write_tokenizer(tokenizer_dir: Path, target: Path, pad_token: str) -> None:
    """A CLIPTokenizer folder at `target` from the vocabulary and merges in `tokenizer_dir`."""
    _check_tokenizer_dir(tokenizer_dir)
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, target / name)
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    config = {
        **special,
        "tokenizer_class": "CLIPTokenizer",
        # kohya and diffusers both rely on 77: longer prompts are truncated, not refused.
        "model_max_length": TOKENIZER_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2), "utf-8")
    (target / "special_tokens_map.json").write_text(json.dumps(special, indent=2), "utf-8")


def build_config_folder(template: Path, tokenizer_dir: Path, target: Path) -> Path:
    """Copy the JSON configs of `template` and a tokenizer for every tokenizer in its
    model_index.json into `target` (built beside it and renamed into place)."""
    _check_tokenizer_dir(tokenizer_dir)
    index = json.loads((template / "model_index.json").read_text("utf-8"))
    with atomic_folder(target) as scratch:
        for config in template.rglob("*.json"):
            relative = config.relative_to(template)
            if relative.parts[0] in PAD_TOKENS:
                continue  # tokenizers come from tokenizer_dir
            (scratch / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(config, scratch / relative)
        for name, pad_token in PAD_TOKENS.items():
            if name in index:
                write_tokenizer(tokenizer_dir, scratch / name, pad_token)
    return target


def config_folder_for(checkpoint: Path, tokenizer_dir: Path, cache_root: Path) -> Path:
    """A complete diffusers config folder for `checkpoint` (SD1.5 or SDXL, told apart by its
    keys), cached under `cache_root` by version and tokenizer."""
    version = detect_base_model_version(str(checkpoint))
    _check_tokenizer_dir(tokenizer_dir)
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        digest.update((tokenizer_dir / name).read_bytes())
    target = cache_root / f"{version}-{digest.hexdigest()[:12]}"
    if (target / "model_index.json").is_file():
        return target
    return build_config_folder(shipped_config(version), tokenizer_dir, target)
