"""A tiny random-weight SDXL pipeline in diffusers layout (two text encoders, text-time
conditioning), built offline like lora_pipeline.tiny_models builds the tiny SD1.5."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from lora_pipeline.tiny_models import tiny_clip_text_config, tiny_clip_tokenizer, tiny_vae


def build_tiny_sdxl(folder: Path) -> Path:
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextModel,
        CLIPTextModelWithProjection,
    )

    if (folder / "model_index.json").is_file():
        return folder
    scratch = Path(tempfile.mkdtemp())
    try:
        tokenizer = tiny_clip_tokenizer(scratch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            text_config = tiny_clip_text_config(tokenizer)
            pipe = StableDiffusionXLPipeline(
                vae=tiny_vae(),
                text_encoder=CLIPTextModel(text_config),
                text_encoder_2=CLIPTextModelWithProjection(text_config),
                tokenizer=tokenizer,
                tokenizer_2=tokenizer,
                unet=UNet2DConditionModel(
                    sample_size=16,
                    layers_per_block=1,
                    block_out_channels=(32, 64),
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=(2, 4),
                    use_linear_projection=True,
                    addition_embed_type="text_time",
                    addition_time_embed_dim=8,
                    transformer_layers_per_block=(1, 2),
                    projection_class_embeddings_input_dim=80,  # 6 time ids × 8 + 32 pooled
                    cross_attention_dim=64,  # the two encoders' hidden states side by side
                    norm_num_groups=32,
                ),
                scheduler=EulerDiscreteScheduler(
                    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
                ),
            )
        pipe.save_pretrained(scratch / "pipeline", safe_serialization=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(scratch / "pipeline"), folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder
