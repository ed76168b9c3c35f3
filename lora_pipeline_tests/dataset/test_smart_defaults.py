"""Smart training defaults (seed 002's table) and base model version detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lora_pipeline.training.defaults import (
    SmartDefaultsError,
    detect_base_model_version,
    normalize_base_model_version,
    smart_defaults,
)


@pytest.mark.parametrize(
    ("count", "epochs", "batch"),
    [
        (0, 20, 1),
        (19, 20, 1),
        (20, 15, 1),
        (29, 15, 1),
        (30, 15, 2),
        (49, 15, 2),
        (50, 10, 2),
        (99, 10, 2),
        (100, 8, 4),
        (5000, 8, 4),
    ],
)
def test_epochs_and_batch_by_image_count(count: int, epochs: int, batch: int) -> None:
    assert smart_defaults(count) == {
        "epochs": epochs,
        "batch_size": batch,
        "learning_rate": 1e-4,
        "rank": 32,
        "alpha": 16,
        "resolution": 512,
    }


def test_resolution_follows_the_base_model() -> None:
    assert smart_defaults(47, "sdxl")["resolution"] == 1024
    assert smart_defaults(47, "SD1.5")["resolution"] == 512
    assert normalize_base_model_version("sd_xl") == "sdxl"
    assert normalize_base_model_version(" sd_v1 ") == "sd15"


@pytest.mark.parametrize(
    ("count", "version", "message"),
    [
        (-1, "sd15", "non-negative"),
        (True, "sd15", "non-negative"),
        (2.5, "sd15", "non-negative"),
        (10, "sd3", "unknown base model version"),
        (10, None, "unknown base model version"),
    ],
)
def test_bad_input(count: object, version: object, message: str) -> None:
    with pytest.raises(SmartDefaultsError, match=message):
        smart_defaults(count, version)  # type: ignore[arg-type]


def test_detect_base_model_version(tmp_path: Path) -> None:
    xl_folder = tmp_path / "xl"
    xl_folder.mkdir()
    (xl_folder / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionXLPipeline"})
    )
    sd_folder = tmp_path / "sd"
    sd_folder.mkdir()
    (sd_folder / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline"})
    )
    xl_file, sd_file = tmp_path / "xl.safetensors", tmp_path / "sd.safetensors"
    tensor = np.zeros(2, dtype=np.float32)
    save_file({"conditioner.embedders.1.model.ln_final.weight": tensor}, str(xl_file))
    save_file({"cond_stage_model.transformer.final_layer_norm.weight": tensor}, str(sd_file))
    assert detect_base_model_version(str(xl_folder)) == "sdxl"
    assert detect_base_model_version(str(sd_folder)) == "sd15"
    assert detect_base_model_version(str(tmp_path)) == "sd15"  # no model_index.json
    assert detect_base_model_version(str(xl_file)) == "sdxl"
    assert detect_base_model_version(str(sd_file)) == "sd15"
    assert detect_base_model_version("stabilityai/stable-diffusion-xl-base-1.0") == "sdxl"
    assert detect_base_model_version("runwayml/stable-diffusion-v1-5") == "sd15"
    assert detect_base_model_version(None) == "sd15"
