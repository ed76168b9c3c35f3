"""SDXL: two text encoders (lora_te1_ / lora_te2_), text-time conditioning, SDXL metadata, and a
file diffusers applies completely."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_pipeline.training.kohya_format import read_kohya_lora
from lora_pipeline.training.trainer import TrainingConfig, TrainingExample, train_lora
from lora_pipeline_tests.training.tiny_sdxl import build_tiny_sdxl


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


def test_sdxl_trains_unet_and_both_text_encoders(
    tiny_sdxl: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    from diffusers import StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict

    config = TrainingConfig(
        base_model=str(tiny_sdxl),
        max_steps=2,
        batch_size=2,
        rank=4,
        alpha=4.0,
        train_text_encoder=True,
        device="cpu",
        sample_prompts=("zkchar, red square",),
        sample_steps=2,
    )
    result = train_lora(config, examples, tmp_path / "xl.safetensors")
    assert result.config["resolution"] == 32  # the tiny SDXL's native size (SDXL: 1024)
    tensors, metadata = read_kohya_lora(result.path)
    modules = {key.split(".", 1)[0] for key in tensors}
    first = {m for m in modules if m.startswith("lora_te1_text_model_encoder_layers_")}
    second = {m for m in modules if m.startswith("lora_te2_text_model_encoder_layers_")}
    assert len(first) == len(second) == 2 * 6
    assert not any(m.startswith("lora_te_") for m in modules)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, local_files_only=True)
    pipe.load_lora_weights(str(result.path), adapter_name="trained")
    loaded = sum(
        len(get_peft_model_state_dict(model, adapter_name="trained"))
        for model in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
    )
    assert loaded == 2 * len(modules), "every module is applied"
