"""Tiny Stable Diffusion models with random weights, built offline.

The demo and the tests need a real diffusers pipeline that loads, generates and trains through the
same code as a full SD1.5 checkpoint, without downloading anything. This builds one of about 6 MB
(the recipe is in shared/reference/tiny-models.md): a byte-level CLIP tokenizer written from
scratch, a 2-layer CLIP text encoder, a 2-block UNet and VAE, and the SD1.5 Euler scheduler
(`tiny_sd_pipeline`; the toy world reuses it with its own VAE).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lora_pipeline.files import atomic_folder

TOKENIZER_MAX_LENGTH = 77


def _write_byte_level_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """A CLIP vocabulary of the 256 byte symbols (with and without </w>) and no merges.

    Such a tokenizer splits every text into single bytes, which is all a random-weight model needs,
    and it is a valid CLIPTokenizer that kohya tools and diffusers load like the real one.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab_file = folder / "vocab.json"
    merges_file = folder / "merges.txt"
    vocab_file.write_text(json.dumps({token: i for i, token in enumerate(tokens)}), "utf-8")
    merges_file.write_text("#version: 0.2\n", "utf-8")
    return vocab_file, merges_file


def tiny_clip_tokenizer(scratch: Path):  # -> CLIPTokenizer
    """The byte-level CLIP tokenizer of the tiny models (its files are written to `scratch`)."""
    from transformers import CLIPTokenizer

    vocab_file, merges_file = _write_byte_level_tokenizer_files(scratch)
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=TOKENIZER_MAX_LENGTH)


def tiny_clip_text_config(
    tokenizer, projection_dim: int = 32, hidden_size: int = 32
):  # -> CLIPTextConfig
    """A two-layer CLIP text tower for `tiny_clip_tokenizer`, 32 wide unless asked otherwise
    (the tiny SDXL's second encoder is wider, as bigG is wider than CLIP-L)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_vae():  # -> AutoencoderKL
    """The tests' VAE: two blocks, so 64 px images become 32×32 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    )


def tiny_sd_pipeline(scratch: Path, vae_factory: Callable[[], Any] = tiny_vae):
    """An untrained StableDiffusionPipeline with SD1.5's architecture, a few MB: the tests'
    random model and the toy world's base (which brings its own VAE). The parts are made in a
    fixed order (tokenizer, text encoder, UNet, VAE), so a seed fixes every weight."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = tiny_clip_tokenizer(scratch)
    text_encoder = CLIPTextModel(tiny_clip_text_config(tokenizer))
    unet = UNet2DConditionModel(
        sample_size=16,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = vae_factory()
    # steps_offset=1 as in the SD1.5 scheduler config (diffusers warns about 0).
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random-weight StableDiffusionPipeline into `folder` and return the folder.

    The weights depend only on `seed`. An existing pipeline (a model_index.json in the folder) is
    reused as it is, so a demo or a test session builds it once.
    """
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    # Built beside the folder and renamed into place, so a crash or a concurrent build never
    # leaves a half-written pipeline that a later call would take for a finished one.
    with tempfile.TemporaryDirectory() as work, atomic_folder(folder, replace=False) as staging:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pipeline = tiny_sd_pipeline(Path(work))
        pipeline.save_pretrained(staging, safe_serialization=True)
        # transformers 5 saves only tokenizer.json; older tools (kohya's tokenizer cache) read the
        # slow files, so they go beside it.
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(Path(work) / name, staging / "tokenizer" / name)
    return folder
