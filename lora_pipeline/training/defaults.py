"""Smart training defaults from the size of a dataset (the LoRA train guide's table).

Smaller datasets need more passes over the data (epochs); larger ones can afford bigger batches.
Rank 32 with alpha 16 (dim/2) and a learning rate of 1e-4 are the guide's standard LoRA
settings; the resolution is the base model's native one (SD1.5 512, SDXL 1024).
This module imports nothing heavy, so planners and the dataset stage can use it freely.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lora_pipeline.errors import PipelineError
from lora_pipeline.generation.single_file import is_sdxl_checkpoint

BASE_MODEL_VERSIONS = ("sd15", "sdxl")
NATIVE_RESOLUTION = {"sd15": 512, "sdxl": 1024}
LEARNING_RATE = 1e-4
RANK = 32
ALPHA = 16
# Other spellings seen in configs and kohya metadata, mapped to the two names used here.
_VERSION_ALIASES = {
    "sd15": "sd15",
    "sd1.5": "sd15",
    "sd_v1": "sd15",
    "sd1": "sd15",
    "sdxl": "sdxl",
    "sd_xl": "sdxl",
    "sdxl_base_v1-0": "sdxl",
}
# (smallest image count, value): the first row whose bound the count reaches, from the top.
_EPOCHS = ((100, 8), (50, 10), (20, 15), (0, 20))
_BATCH_SIZES = ((100, 4), (30, 2), (0, 1))
_SDXL_HUB_ID = re.compile(r"(?:^|[^a-z])xl(?:[^a-z]|$)|sdxl", re.IGNORECASE)


class SmartDefaultsError(PipelineError, ValueError):
    """An image count or base model version that the defaults table cannot handle."""


def normalize_base_model_version(version: str) -> str:
    """`sd15` or `sdxl` for any accepted spelling; SmartDefaultsError otherwise."""
    key = version.strip().lower() if isinstance(version, str) else None
    if key not in _VERSION_ALIASES:
        raise SmartDefaultsError(
            f"unknown base model version {version!r}: use one of {', '.join(BASE_MODEL_VERSIONS)}"
        )
    return _VERSION_ALIASES[key]


def smart_defaults(image_count: int, base_model_version: str = "sd15") -> dict[str, Any]:
    """epochs, batch_size, learning_rate, rank, alpha and resolution for a dataset.

    Epochs: under 20 images 20, 20–49 15, 50–99 10, 100 and more 8.
    Batch size: under 30 images 1, 30–99 2, 100 and more 4.
    """
    if isinstance(image_count, bool) or not isinstance(image_count, int) or image_count < 0:
        raise SmartDefaultsError(f"image count must be a non-negative integer, got {image_count!r}")
    version = normalize_base_model_version(base_model_version)
    return {
        "epochs": _lookup(_EPOCHS, image_count),
        "batch_size": _lookup(_BATCH_SIZES, image_count),
        "learning_rate": LEARNING_RATE,
        "rank": RANK,
        "alpha": ALPHA,
        "resolution": NATIVE_RESOLUTION[version],
    }


def detect_base_model_version(base_model: str | None) -> str:
    """`sdxl` or `sd15` for a diffusers folder, a single-file checkpoint or a hub id.

    Reads only small files (model_index.json, the safetensors header); anything it cannot tell
    apart is taken as SD1.5, the smaller and more common base.
    """
    if not base_model:
        return "sd15"
    path = Path(base_model).expanduser()
    if path.is_dir():
        return _version_of_folder(path)
    if path.is_file():
        # One reader of checkpoint layouts for every stage (conditioner.embedders.*: SDXL).
        return "sdxl" if is_sdxl_checkpoint(path) else "sd15"
    return "sdxl" if _SDXL_HUB_ID.search(base_model) else "sd15"


def _lookup(table: tuple[tuple[int, int], ...], count: int) -> int:
    return next(value for bound, value in table if count >= bound)


def _version_of_folder(folder: Path) -> str:
    index = folder / "model_index.json"
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        return "sd15"
    return "sdxl" if "XL" in str(class_name) else "sd15"
