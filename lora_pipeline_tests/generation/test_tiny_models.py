from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lora_pipeline.tiny_models import build_tiny_sd


def _unet_sha256(folder: Path) -> str:
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def test_tiny_sd_reloads_offline_with_every_component(tiny_sd: Path) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True)
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.safety_checker is None
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.tokenizer("ab").input_ids[1:-1] != []
    assert (tiny_sd / "tokenizer" / "vocab.json").is_file()


def test_build_reuses_an_existing_pipeline(tiny_sd: Path) -> None:
    before = (tiny_sd / "model_index.json").stat().st_mtime_ns
    assert build_tiny_sd(tiny_sd) == tiny_sd
    assert (tiny_sd / "model_index.json").stat().st_mtime_ns == before


def test_weights_are_a_function_of_the_seed(tiny_sd: Path, tmp_path: Path) -> None:
    same = build_tiny_sd(tmp_path / "same", seed=0)
    other = build_tiny_sd(tmp_path / "other", seed=1)
    assert _unet_sha256(same) == _unet_sha256(tiny_sd)
    assert _unet_sha256(other) != _unet_sha256(tiny_sd)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "scratch left behind"


def test_build_into_an_empty_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert (build_tiny_sd(tmp_path / "empty") / "model_index.json").is_file()


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder", "tokenizer", "scheduler"])
def test_every_component_is_saved(tiny_sd: Path, component: str) -> None:
    assert any((tiny_sd / component).iterdir())
