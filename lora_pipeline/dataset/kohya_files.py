"""Training files beside a shot split, for people who train with kohya sd-scripts elsewhere.

- `dataset.toml`: the kohya dataset config, one subset per shot folder with its num_repeats and
  keep_tokens (trigger word + shot tag stay first when captions shuffle);
- `kohya_config.json`: train_network.py's arguments, in the sections of a kohya config file;
- `training_config.json`: the simplified settings (seed 002);
- `training_info.json`: everything about the run-to-be: dataset, parameters and why;
- `train.sh`: a ready-to-run script (kohya, and a commented diffusers alternative);
- `metadata.jsonl`: captions for diffusers' `imagefolder` loader (the diffusers method).
Paths in these files are relative to the split folder, so they stay valid wherever it is
copied; train.sh changes into it first. The smart defaults come from training.defaults.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_pipeline.training.defaults import smart_defaults

DATASET_TOML = "dataset.toml"
KOHYA_CONFIG = "kohya_config.json"
TRAINING_CONFIG = "training_config.json"
TRAINING_INFO = "training_info.json"
TRAIN_SCRIPT = "train.sh"
DIFFUSERS_METADATA = "metadata.jsonl"
SEED = 42
_BUCKETS = {"sd15": (256, 1024), "sdxl": (512, 2048)}
_SCRIPTS = {"sd15": "train_network.py", "sdxl": "sdxl_train_network.py"}


@dataclass(frozen=True)
class Subset:
    shot_type: str
    folder: str
    images: int
    num_repeats: int
    shot_tag: str | None
    keep_tokens: int

    def record(self) -> dict[str, Any]:
        return {
            "shot_type": self.shot_type,
            "folder": self.folder,
            "images": self.images,
            "num_repeats": self.num_repeats,
            "shot_tag": self.shot_tag,
            "keep_tokens": self.keep_tokens,
        }


@dataclass(frozen=True)
class TrainingPlan:
    person: str
    character: str
    trigger_word: str
    version_hash: str
    folder_name: str
    base_model: str | None
    base_model_version: str
    subsets: tuple[Subset, ...]

    @property
    def image_count(self) -> int:
        return sum(subset.images for subset in self.subsets)

    @property
    def parameters(self) -> dict[str, Any]:
        return smart_defaults(self.image_count, self.base_model_version)

    @property
    def output_dir(self) -> str:
        # Beside the split, not in it: rebuilding the split must not delete trained LoRAs.
        return f"../{self.folder_name}-output"

    @property
    def output_name(self) -> str:
        return f"{self.character}_{self.version_hash[:12]}"

    @property
    def steps_per_epoch(self) -> int:
        shown = sum(subset.images * subset.num_repeats for subset in self.subsets)
        return math.ceil(shown / self.parameters["batch_size"])

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.parameters["epochs"]


def dataset_toml(plan: TrainingPlan) -> str:
    params = plan.parameters
    low, high = _BUCKETS[plan.base_model_version]
    lines = [
        f"# kohya sd-scripts dataset config: {_one_line(plan.person)} "
        f"(trigger word {plan.trigger_word!r}),",
        f"# dataset version {plan.version_hash}. Written by lora_pipeline.",
        "# image_dir is relative to this folder: run kohya from here (train.sh does). Captions are",
        "# the .txt files beside the images; keep_tokens holds the trigger word and shot tag first",
        "# when captions shuffle. num_repeats balance close/mid/far towards 35/45/25 %.",
        "",
        "[general]",
        'caption_extension = ".txt"',
        "shuffle_caption = true",
        "enable_bucket = true",
        "bucket_reso_steps = 64",
        f"min_bucket_reso = {low}",
        f"max_bucket_reso = {high}",
        "",
        "[[datasets]]",
        f"resolution = {params['resolution']}",
        f"batch_size = {params['batch_size']}",
    ]
    for subset in plan.subsets:
        tag = f", shot tag {subset.shot_tag!r}" if subset.shot_tag else ""
        lines += [
            "",
            "  [[datasets.subsets]]",
            f"  # {subset.shot_type}: {subset.images} image(s){tag}",
            f"  image_dir = {_toml_string(subset.folder)}",
            f"  num_repeats = {subset.num_repeats}",
            f"  keep_tokens = {subset.keep_tokens}",
        ]
    return "\n".join(lines) + "\n"


def kohya_config(plan: TrainingPlan) -> dict[str, Any]:
    params = plan.parameters
    training: dict[str, Any] = {
        "output_dir": plan.output_dir,
        "output_name": plan.output_name,
        "save_model_as": "safetensors",
        "save_precision": "fp16",
        "save_every_n_epochs": max(1, params["epochs"] // 4),
        "max_train_epochs": params["epochs"],
        "learning_rate": params["learning_rate"],
        "unet_lr": params["learning_rate"],
        "text_encoder_lr": params["learning_rate"] / 2,
        "lr_scheduler": "cosine_with_restarts",
        "optimizer_type": "AdamW",
        "mixed_precision": "fp16",
        "gradient_checkpointing": True,
        "sdpa": True,
        "seed": SEED,
        "min_snr_gamma": 5.0,
        "max_data_loader_n_workers": 2,
        "persistent_data_loader_workers": True,
        "logging_dir": f"{plan.output_dir}/logs",
        "log_with": "tensorboard",
        "log_prefix": plan.character,
    }
    if plan.base_model_version == "sd15":
        # Anime SD1.5 checkpoints are trained and used with CLIP skip 2.
        training["clip_skip"] = 2
    return {
        "model_arguments": {
            "pretrained_model_name_or_path": plan.base_model or "",
            "v2": False,
            "v_parameterization": False,
        },
        "dataset_arguments": {"dataset_config": DATASET_TOML, "cache_latents": True},
        "training_arguments": training,
        "network_arguments": {
            "network_module": "networks.lora",
            "network_dim": params["rank"],
            "network_alpha": params["alpha"],
        },
    }


def training_config(plan: TrainingPlan) -> dict[str, Any]:
    params = plan.parameters
    return {
        "person": plan.person,
        "trigger_word": plan.trigger_word,
        "dataset_version": plan.version_hash,
        "base_model": plan.base_model,
        "base_model_version": plan.base_model_version,
        "resolution": params["resolution"],
        "epochs": params["epochs"],
        "batch_size": params["batch_size"],
        "learning_rate": params["learning_rate"],
        "network_dim": params["rank"],
        "network_alpha": params["alpha"],
        "total_images": plan.image_count,
        "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": plan.total_steps,
        "dataset_config": DATASET_TOML,
        "output_dir": plan.output_dir,
        "output_name": plan.output_name,
    }


def training_info(
    plan: TrainingPlan, created_at: str, distribution: Mapping[str, int], warnings: Sequence[str]
) -> dict[str, Any]:
    params = plan.parameters
    return {
        "person": plan.person,
        "character": plan.character,
        "trigger_word": plan.trigger_word,
        "dataset_version": plan.version_hash,
        "created_at": created_at,
        "generator": "lora_pipeline",
        "base_model": plan.base_model,
        "base_model_version": plan.base_model_version,
        "dataset": {
            "total_images": plan.image_count,
            "shot_distribution": dict(distribution),
            "subsets": [subset.record() for subset in plan.subsets],
            "images_per_epoch": sum(s.images * s.num_repeats for s in plan.subsets),
            "warnings": list(warnings),
        },
        "parameters": params,
        "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": plan.total_steps,
        "reasoning": {
            "epochs": (
                f"{plan.image_count} images: smaller datasets need more passes "
                "(<20 → 20, 20–49 → 15, 50–99 → 10, 100+ → 8)"
            ),
            "batch_size": (
                "larger datasets can use bigger batches, which need more VRAM "
                "(<30 → 1, 30–99 → 2, 100+ → 4)"
            ),
            "learning_rate": "1e-4 is the standard for LoRA fine-tuning",
            "network": "rank 32 balances capacity and file size; alpha 16 is rank/2",
            "resolution": f"the native resolution of {plan.base_model_version}",
            "num_repeats": "per shot type, towards close 30–40 %, mid 40–50 %, far 20–30 %",
        },
        "files": {
            "dataset_config": DATASET_TOML,
            "kohya_config": KOHYA_CONFIG,
            "training_config": TRAINING_CONFIG,
            "script": TRAIN_SCRIPT,
            "diffusers_metadata": DIFFUSERS_METADATA,
        },
    }


def train_script(plan: TrainingPlan) -> str:
    config = kohya_config(plan)
    params = plan.parameters
    script = _SCRIPTS[plan.base_model_version]
    flags = ['  --pretrained_model_name_or_path "$BASE_MODEL"']
    for section, values in config.items():
        for key, value in values.items():
            if section == "model_arguments" and key == "pretrained_model_name_or_path":
                continue
            if key in ("output_dir", "logging_dir"):
                target = "$OUTPUT_DIR" if key == "output_dir" else "$OUTPUT_DIR/logs"
                flags.append(f'  --{key} "{target}"')
            elif value is True:
                flags.append(f"  --{key}")
            elif value is not False:
                flags.append(f"  --{key} {shlex.quote(str(value))}")
    lines = [
        "#!/usr/bin/env bash",
        f"# Train the LoRA of {_one_line(plan.person)} (trigger word: {plan.trigger_word}) on this "
        f"dataset, version {plan.version_hash}.",
        f"# Written by lora_pipeline from {KOHYA_CONFIG}; edit freely.",
        "#",
        "#   KOHYA_DIR=/path/to/sd-scripts ./train.sh        (BASE_MODEL, OUTPUT_DIR override)",
        "#",
        f"# Smart defaults for {plan.image_count} images: {params['epochs']} epochs, batch "
        f"{params['batch_size']}, lr {params['learning_rate']}, rank {params['rank']}, "
        f"alpha {params['alpha']}, {params['resolution']} px; {plan.total_steps} steps.",
        "set -euo pipefail",
        "",
        'DATASET_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
        'KOHYA_DIR="${KOHYA_DIR:?set KOHYA_DIR to a kohya sd-scripts checkout '
        '(git clone https://github.com/kohya-ss/sd-scripts)}"',
        f"BASE_MODEL_DEFAULT={shlex.quote(plan.base_model or '')}",
        'BASE_MODEL="${BASE_MODEL:-$BASE_MODEL_DEFAULT}"',
        f'OUTPUT_DIR="${{OUTPUT_DIR:-$DATASET_DIR/{plan.output_dir}}}"',
        'if [ -z "$BASE_MODEL" ]; then',
        '  echo "set BASE_MODEL to the checkpoint to train on" >&2',
        "  exit 1",
        "fi",
        "# kohya resolves the image folders of dataset.toml from the working directory.",
        'cd "$DATASET_DIR"',
        'mkdir -p "$OUTPUT_DIR"',
        "",
        "# Method 1: kohya sd-scripts (recommended).",
        '# Monitor it with: tensorboard --logdir "$OUTPUT_DIR/logs"',
        f'accelerate launch --num_cpu_threads_per_process 1 "$KOHYA_DIR/{script}" \\',
        " \\\n".join(flags),
        "",
        "# Method 2: diffusers' examples/text_to_image/train_text_to_image_lora.py (uncomment).",
        f"# It reads the captions from {DIFFUSERS_METADATA}; it has no num_repeats.",
        "# accelerate launch train_text_to_image_lora.py \\",
        '#   --pretrained_model_name_or_path="$BASE_MODEL" \\',
        '#   --train_data_dir="$DATASET_DIR" \\',
        '#   --output_dir="$OUTPUT_DIR/diffusers" \\',
        f"#   --resolution={params['resolution']} \\",
        f"#   --train_batch_size={params['batch_size']} \\",
        f"#   --num_train_epochs={params['epochs']} \\",
        f"#   --learning_rate={params['learning_rate']} \\",
        f"#   --rank={params['rank']}",
    ]
    return "\n".join(lines) + "\n"


def diffusers_metadata(files_and_captions: Sequence[tuple[str, str]]) -> str:
    """One JSON line per image: `file_name` relative to this folder and its caption `text`."""
    return "".join(
        json.dumps({"file_name": name, "text": caption}, ensure_ascii=False) + "\n"
        for name, caption in files_and_captions
    )


def write_training_files(
    folder: Path,
    plan: TrainingPlan,
    created_at: str,
    distribution: Mapping[str, int],
    warnings: Sequence[str],
    files_and_captions: Sequence[tuple[str, str]],
) -> None:
    texts = {
        DATASET_TOML: dataset_toml(plan),
        KOHYA_CONFIG: _json(kohya_config(plan)),
        TRAINING_CONFIG: _json(training_config(plan)),
        TRAINING_INFO: _json(training_info(plan, created_at, distribution, warnings)),
        TRAIN_SCRIPT: train_script(plan),
        DIFFUSERS_METADATA: diffusers_metadata(files_and_captions),
    }
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / TRAIN_SCRIPT).chmod(0o755)


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _one_line(text: str) -> str:
    # Names go into comments of a TOML file and a shell script: a line break would end them.
    return " ".join(text.split())


def _toml_string(text: str) -> str:
    # A JSON string is a valid TOML basic string for the characters a folder name can hold.
    return json.dumps(text, ensure_ascii=False)
