"""Train the toy world's models: a tiny Stable Diffusion that draws its figures, and the identity
model that tells the figures apart.

`python scripts/train_toy_world.py OUT` runs it (about 20 minutes on 2 CPU cores); the result
ships in `lora_pipeline/toy_world/models/`. In order:

1. the VAE learns to encode and decode the figures (64 px ↔ 4×16×16 latents), and its latent
   scaling factor is measured, as SD's 0.18215 was;
2. the UNet and the CLIP text encoder learn to denoise those latents conditioned on the prompts
   (epsilon prediction, SD1.5's scheduler), with 10 % empty prompts for classifier-free guidance.
   The figures in `HELD_OUT` are never shown: the base model draws them only from their parts,
   approximately, which is what a character LoRA then fixes;
3. the identity model (a CLIP vision tower with projection, what `ReferenceIdentifier` loads)
   learns one direction per figure (a cosine classifier, "NormFace"), on blurred and noisy
   drawings so that it also recognises the imperfect figures a diffusion model draws.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from lora_pipeline.files import atomic_folder
from lora_pipeline.tiny_models import tiny_sd_pipeline
from lora_pipeline.toy_world.world import Figure, all_figures, draw_figure, samples

# The demo's character: a figure the base model never saw whole.
HELD_OUT = (Figure("teal", "yellow raincoat", "red boots"),)
IDENTITY_IMAGE_SIDE = 64
IDENTITY_PATCH = 8
IDENTITY_DIM = 32
# The cosine classifier's temperature: logits are this times a cosine.
NORMFACE_SCALE = 16.0
CAPTION_DROPOUT = 0.1

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainSteps:
    """How long each model trains (the defaults make the shipped models)."""

    vae: int = 600
    unet: int = 2500
    identity: int = 600
    batch_size: int = 32
    # Drawings of each figure in the UNet's cached latents.
    drawings_per_figure: int = 64
    seed: int = 0


def base_figures() -> list[Figure]:
    """The figures the base model learns: all but the held-out ones."""
    return [f for f in all_figures() if f not in HELD_OUT]


# ---------------------------------------------------------------------------- models


def toy_vae():  # -> AutoencoderKL
    """Three blocks: 64 px images become 16×16 latents (SD's factor of 8 would leave 8×8)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    )


def build_pipeline(scratch: Path):  # -> StableDiffusionPipeline
    """The untrained toy Stable Diffusion: the tests' tiny SD1.5 with the toy VAE."""
    return tiny_sd_pipeline(scratch, vae_factory=toy_vae)


def to_pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    """Images as a batch in -1..1, as SD's VAE takes them."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def _drawings(figures: list[Figure], count: int, seed: int) -> list[tuple[Figure, Image.Image]]:
    return [(f, draw_figure(f, s)) for f, s in samples(figures, count, seed)]


# ---------------------------------------------------------------------------- 1. VAE


def train_vae(vae, steps: int, batch_size: int, seed: int, log: Log) -> float:
    """Reconstruction (MSE + a small KL), then the latent scaling factor (1 / latents' std)."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    figures = all_figures()
    vae.train()
    for step in range(steps):
        pixels = to_pixels([image for _, image in _drawings(figures, batch_size, seed + step)])
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, pixels) + 1e-6 * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _every(step, steps, log, f"vae step {step + 1}/{steps}: loss {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        pixels = to_pixels([image for _, image in _drawings(figures, 128, seed - 1)])
        scale = 1.0 / float(vae.encode(pixels).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=scale)
    return scale


# ---------------------------------------------------------------------------- 2. UNet


def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str]) -> torch.Tensor:
    """The prompt embeddings exactly as StableDiffusionPipeline computes them."""
    ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids)[0]


def train_denoiser(
    pipe, steps: int, batch_size: int, seed: int, log: Log, drawings_per_figure: int = 64
) -> None:
    """UNet and text encoder learn epsilon prediction on the base figures' cached latents."""
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    figures = base_figures()
    drawings = _drawings(figures, drawings_per_figure * len(figures), seed)
    with torch.no_grad():
        latents = (
            torch.cat(
                [
                    pipe.vae.encode(
                        to_pixels([d[1] for d in drawings[i : i + 64]])
                    ).latent_dist.mean
                    for i in range(0, len(drawings), 64)
                ]
            )
            * pipe.vae.config.scaling_factor
        )
    prompts = [figure.prompt for figure, _ in drawings]
    parameters = [*pipe.unet.parameters(), *pipe.text_encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _warm_cosine(s, steps))
    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    pipe.unet.train()
    pipe.text_encoder.train()
    alphas = noise_scheduler.alphas_cumprod
    for step in range(steps):
        index = torch.randint(0, len(drawings), (batch_size,), generator=generator)
        clean = latents[index]
        captions = ["" if rng.random() < CAPTION_DROPOUT else prompts[i] for i in index.tolist()]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, len(alphas), (batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        embeddings = encode_prompts(pipe.tokenizer, pipe.text_encoder, captions)
        prediction = pipe.unet(noisy, timesteps, embeddings).sample
        # Min-SNR-5 weighting (Hang et al. 2023): converges several times faster.
        snr = alphas[timesteps] / (1 - alphas[timesteps])
        weight = torch.clamp(snr, max=5.0) / snr
        loss = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3)) * weight
        loss = loss.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        _every(step, steps, log, f"unet step {step + 1}/{steps}: loss {loss.item():.4f}")
    pipe.unet.eval()
    pipe.text_encoder.eval()


def _warm_cosine(step: int, total: int, warmup: int = 100) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# ---------------------------------------------------------------------------- 3. identity


def identity_processor():  # -> CLIPImageProcessorPil
    from transformers import CLIPImageProcessorPil

    side = IDENTITY_IMAGE_SIDE
    return CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )


def build_identity_model():  # -> CLIPVisionModelWithProjection
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IDENTITY_IMAGE_SIDE,
            patch_size=IDENTITY_PATCH,
            projection_dim=IDENTITY_DIM,
        )
    )


def degrade(image: Image.Image, rng: random.Random) -> Image.Image:
    """Blur, noise and a colour cast: how a small diffusion model's figures differ from the
    drawings, so the identity model judges the figure and not the rendering."""
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.5)))
    array = np.asarray(image, dtype=np.float32)
    array = array + np.random.default_rng(rng.randrange(1 << 30)).normal(
        0, rng.uniform(0, 12), array.shape
    )
    array = array * np.array([rng.uniform(0.9, 1.1) for _ in range(3)], dtype=np.float32)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def train_identity(steps: int, batch_size: int, seed: int, log: Log):
    """(model, processor): a cosine classifier over all figures, held-out ones included (it is
    the judge of the world, not a student of the base model)."""
    model, processor = build_identity_model(), identity_processor()
    figures = all_figures()
    prototypes = torch.nn.Parameter(torch.randn(len(figures), IDENTITY_DIM))
    optimizer = torch.optim.AdamW([*model.parameters(), prototypes], lr=2e-3)
    rng = random.Random(seed)
    model.train()
    for step in range(steps):
        batch = [(f, s) for f, s in samples(figures, batch_size, seed + step)]
        images = [degrade(draw_figure(f, s), rng) for f, s in batch]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        labels = torch.tensor([figures.index(f) for f, _ in batch])
        embeds = F.normalize(model(pixel_values=pixels).image_embeds, dim=-1)
        logits = NORMFACE_SCALE * embeds @ F.normalize(prototypes, dim=-1).T
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _every(step, steps, log, f"identity step {step + 1}/{steps}: loss {loss.item():.4f}")
    model.eval()
    return model, processor


# ---------------------------------------------------------------------------- all of it


def train_toy_world(out: Path, steps: TrainSteps = TrainSteps(), log: Log = print) -> Path:
    """Train both models and save them under `out` (`sd/`, a diffusers folder, and
    `identity/`, a CLIP vision folder); an existing `out` is replaced only once all is done."""
    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as work:
        torch.manual_seed(steps.seed)
        pipe = build_pipeline(Path(work))
        scale = train_vae(pipe.vae, steps.vae, max(8, steps.batch_size // 2), steps.seed, log)
        log(f"vae scaling factor {scale:.4f}")
        train_denoiser(
            pipe, steps.unet, steps.batch_size, steps.seed, log, steps.drawings_per_figure
        )
        identity, processor = train_identity(steps.identity, steps.batch_size, steps.seed, log)
        with atomic_folder(out, replace=True) as staging:
            pipe.save_pretrained(staging / "sd", safe_serialization=True)
            for name in ("vocab.json", "merges.txt"):  # as tiny_models.build_tiny_sd does
                shutil.copyfile(Path(work) / name, staging / "sd" / "tokenizer" / name)
            identity.save_pretrained(staging / "identity", safe_serialization=True)
            processor.save_pretrained(staging / "identity")
    return Path(out)


def _every(step: int, steps: int, log: Log, message: str, every: int = 50) -> None:
    if (step + 1) % every == 0 or step + 1 == steps:
        log(message)
