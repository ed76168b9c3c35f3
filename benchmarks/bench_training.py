"""Training speed and memory: the built-in trainer against a plain diffusers + peft loop.

Both train the same LoRA (rank, alpha, UNet attention targets, AdamW, learning rate) on the same
model, images, captions, resolution, batch size and number of steps. The plain loop is diffusers'
train_text_to_image_lora.py reduced to its core (VAE encode every step, text encode, noise, UNet,
MSE, backward, step). Each variant runs in its own process, so its peak memory (RSS on the CPU,
`torch.cuda.max_memory_allocated` on a GPU) is its own; rounds alternate and medians are kept.

Defaults: the tiny SD on the CPU. `BENCH_TRAINING_MODEL=<SD1.5 folder or .safetensors>` and
`BENCH_TRAINING_RESOLUTION=512` measure a real model (on a GPU machine: it/s and peak VRAM).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from benchmarks.run import Result

ROUNDS = 2
STEPS = 24
WARMUP_STEPS = 2
BATCH_SIZE = 2
RANK = 8
LEARNING_RATE = 1e-4


def _examples(folder: Path) -> list[tuple[Path, str]]:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for index in range(8):
        image = Image.new("RGB", (96, 96), ("white", "black", "gray", "navy")[index % 4])
        ImageDraw.Draw(image).ellipse((10 + index, 12, 80, 70 + index), fill="red")
        path = folder / f"{index}.png"
        image.save(path)
        pairs.append((path, f"zkchar, shape {index}, plain background"))
    return pairs


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _builtin(model: str, pairs: list[tuple[Path, str]], resolution: int, device: str) -> float:
    """Seconds per step of train_lora after warm-up (model loading excluded)."""
    from lora_pipeline.training.trainer import TrainingConfig, TrainingExample, train_lora

    stamps: list[float] = []
    config = TrainingConfig(
        base_model=model,
        rank=RANK,
        alpha=RANK,
        learning_rate=LEARNING_RATE,
        max_steps=STEPS,
        batch_size=BATCH_SIZE,
        resolution=resolution,
        enable_bucket=False,  # square crops, as the plain loop does
        device=device,
        save_every_n_epochs=10_000,
    )
    with tempfile.TemporaryDirectory() as tmp:
        train_lora(
            config,
            [TrainingExample(p, c) for p, c in pairs],
            Path(tmp) / "lora.safetensors",
            lambda _: stamps.append(time.perf_counter()),
        )
    return (stamps[-1] - stamps[WARMUP_STEPS - 1]) / (STEPS - WARMUP_STEPS)


def _plain(model: str, pairs: list[tuple[Path, str]], resolution: int, device: str) -> float:
    """Seconds per step of a plain diffusers + peft LoRA loop."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from lora_pipeline.generation.local import load_pipeline
    from lora_pipeline.training.data import load_pixels
    from lora_pipeline.training.kohya_format import UNET_TARGET_MODULES

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = load_pipeline(model, dtype)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for part in (unet, vae, text_encoder):
        part.requires_grad_(False)
        part.to(device)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=UNET_TARGET_MODULES))
    parameters = [p for p in unet.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.data = parameter.data.float()
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    autocast = torch.autocast("cuda", dtype=dtype) if device.startswith("cuda") else None
    stamps = []
    for step in range(STEPS):
        batch = [pairs[(step * BATCH_SIZE + i) % len(pairs)] for i in range(BATCH_SIZE)]
        with torch.no_grad():
            pixels = torch.stack([load_pixels(p, (resolution, resolution)) for p, _ in batch])
            latents = vae.encode(pixels.to(device, dtype)).latent_dist.sample()
            latents = latents * vae.config.scaling_factor
            ids = tokenizer(
                [c for _, c in batch],
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
            embeddings = text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (BATCH_SIZE,), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if autocast is not None:
            with autocast:
                prediction = unet(noisy, timesteps, embeddings).sample
        else:
            prediction = unet(noisy, timesteps, embeddings).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[WARMUP_STEPS - 1]) / (STEPS - WARMUP_STEPS)


def _measure(variant: str, model: str, images: Path, resolution: int) -> dict[str, float]:
    """One variant in a fresh process: seconds per step and peak memory."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_training",
        variant,
        model,
        str(images),
        str(resolution),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def run() -> Result:
    from lora_pipeline.config import torch_device
    from lora_pipeline.tiny_models import build_tiny_sd

    device = torch_device("auto")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model = os.environ.get("BENCH_TRAINING_MODEL") or str(build_tiny_sd(home / "tiny-sd"))
        resolution = int(os.environ.get("BENCH_TRAINING_RESOLUTION", "64"))
        images = home / "images"
        _examples(images)
        plain, builtin = [], []
        for _ in range(ROUNDS):
            plain.append(_measure("plain", model, images, resolution))
            builtin.append(_measure("builtin", model, images, resolution))
    plain_step = median(r["step_s"] for r in plain)
    builtin_step = median(r["step_s"] for r in builtin)
    memory = "peak_vram_mb" if device.startswith("cuda") else "peak_rss_mb"
    return Result(
        name=f"LoRA training step ({Path(model).name}, {resolution}px, batch {BATCH_SIZE}, "
        f"{device})",
        measured_s=builtin_step,
        baseline_s=plain_step,
        baseline="plain diffusers+peft loop",
        figures={
            "steps": STEPS,
            "rank": RANK,
            "builtin_it_per_s": round(1 / builtin_step, 2),
            "plain_it_per_s": round(1 / plain_step, 2),
            f"builtin_{memory}": round(median(r["peak_mb"] for r in builtin), 1),
            f"plain_{memory}": round(median(r["peak_mb"] for r in plain), 1),
        },
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant", choices=("plain", "builtin"))
    parser.add_argument("model")
    parser.add_argument("images", type=Path)
    parser.add_argument("resolution", type=int)
    args = parser.parse_args(argv)
    from lora_pipeline.config import torch_device
    from lora_pipeline.logging_setup import quiet_ml_libraries

    quiet_ml_libraries()
    device = torch_device("auto")
    pairs = [
        (p, f"zkchar, shape {p.stem}, plain background") for p in sorted(args.images.glob("*.png"))
    ]
    train = _plain if args.variant == "plain" else _builtin
    step_s = train(args.model, pairs, args.resolution, device)
    print(json.dumps({"step_s": step_s, "peak_mb": _peak_memory_mb(device)}))


if __name__ == "__main__":
    main(sys.argv[1:])
