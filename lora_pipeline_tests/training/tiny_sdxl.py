"""A tiny random-weight SDXL pipeline in diffusers layout (two text encoders, text-time
conditioning), built offline like lora_pipeline.tiny_models builds the tiny SD1.5.

As in the real SDXL the second text encoder (bigG there) is wider than the first (CLIP-L):
diffusers tells the two apart in a single file by their width alone, so two encoders of one
width would let a single-file load fill the second with the first one's weights. It has its own
tokenizer (tokenizer_2: the same vocabulary, padding with "!" as OpenCLIP did)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from lora_pipeline.tiny_models import (
    TOKENIZER_MAX_LENGTH,
    tiny_clip_text_config,
    tiny_clip_tokenizer,
    tiny_vae,
)

# The widths of the two text encoders; the UNet's cross-attention sees both side by side.
FIRST_ENCODER_WIDTH = 32
SECOND_ENCODER_WIDTH = 48
# The pooled embedding the UNet's text-time conditioning gets from the second encoder.
POOLED_WIDTH = 32
TIME_EMBED_WIDTH = 8  # × 6 time ids (original size, crop, target size)


def _second_tokenizer(scratch: Path):  # -> CLIPTokenizer
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        str(scratch / "vocab.json"),
        str(scratch / "merges.txt"),
        model_max_length=TOKENIZER_MAX_LENGTH,
        pad_token="!",
    )


def _unet():  # -> UNet2DConditionModel
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_WIDTH,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * TIME_EMBED_WIDTH + POOLED_WIDTH,
        cross_attention_dim=FIRST_ENCODER_WIDTH + SECOND_ENCODER_WIDTH,
        norm_num_groups=32,
    )


def build_tiny_sdxl(folder: Path) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if (folder / "model_index.json").is_file():
        return folder
    scratch = Path(tempfile.mkdtemp())
    try:
        tokenizer = tiny_clip_tokenizer(scratch)
        tokenizer_2 = _second_tokenizer(scratch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            pipe = StableDiffusionXLPipeline(
                vae=tiny_vae(),
                text_encoder=CLIPTextModel(tiny_clip_text_config(tokenizer)),
                text_encoder_2=CLIPTextModelWithProjection(
                    tiny_clip_text_config(
                        tokenizer_2, projection_dim=POOLED_WIDTH, hidden_size=SECOND_ENCODER_WIDTH
                    )
                ),
                tokenizer=tokenizer,
                tokenizer_2=tokenizer_2,
                unet=_unet(),
                scheduler=EulerDiscreteScheduler(
                    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
                ),
            )
        pipe.save_pretrained(scratch / "pipeline", safe_serialization=True)
        # transformers 5 saves only tokenizer.json; the slow files go beside it, as in the real
        # SDXL folders (and a config folder for a single file is built from them).
        for part in ("tokenizer", "tokenizer_2"):
            for name in ("vocab.json", "merges.txt"):
                shutil.copyfile(scratch / name, scratch / "pipeline" / part / name)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(scratch / "pipeline"), folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder
