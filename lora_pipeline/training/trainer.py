"""The built-in LoRA trainer: diffusers + peft, written to be read top to bottom.

It follows diffusers' `train_text_to_image_lora.py`: the base model's tokenizer, text encoder, VAE
and UNet are loaded and frozen, a LoRA adapter is added to the UNet's attention and feed-forward
layers, and for each batch the images are encoded to latents, noised at a random timestep, and
the UNet (with the adapter) learns to predict the noise. Only the adapter's weights train. The
result is saved in the kohya format, so ComfyUI, A1111 and kohya tools load it as they load any
community LoRA.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from lora_pipeline.config import torch_device
from lora_pipeline.generation.local import (
    GenerationError,
    ModelSource,
    SourceKind,
    load_pipeline,
    resolve_model_source,
)
from lora_pipeline.training.kohya_format import (
    UNET_TARGET_MODULES,
    kohya_metadata,
    peft_unet_to_kohya,
    save_kohya_lora,
)

MIXED_PRECISIONS = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MAX_GRAD_NORM = 1.0


class TrainingError(ValueError):
    """Training settings or data that cannot produce a LoRA, or a run that diverged."""


@dataclass
class TrainingConfig:
    base_model: str
    rank: int = 4
    alpha: float = 4.0
    learning_rate: float = 1e-4
    max_steps: int | None = None
    epochs: int = 1
    batch_size: int = 1
    resolution: int = 512
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    trigger_word: str = ""
    dataset_hash: str = ""
    title: str = ""


@dataclass
class TrainingExample:
    image_path: Path
    caption: str


@dataclass
class TrainingProgress:
    step: int
    total_steps: int
    epoch: int
    loss: float
    it_per_s: float
    eta_s: float


@dataclass
class TrainingResult:
    path: Path
    sha256: str
    steps: int
    epochs: int
    losses: list[float]
    final_loss: float
    seconds: float
    metadata: dict[str, str]


# --- checks and data -----------------------------------------------------------------------------


def _validate(config: TrainingConfig, examples: Sequence[TrainingExample], device: str) -> None:
    if not examples:
        raise TrainingError("no training examples: a LoRA needs at least one captioned image")
    problems = []
    if config.rank < 1:
        problems.append(f"rank must be at least 1 (got {config.rank})")
    if config.alpha <= 0:
        problems.append(f"alpha must be positive (got {config.alpha})")
    if config.learning_rate <= 0:
        problems.append(f"learning_rate must be positive (got {config.learning_rate})")
    if config.batch_size < 1:
        problems.append(f"batch_size must be at least 1 (got {config.batch_size})")
    if config.epochs < 1:
        problems.append(f"epochs must be at least 1 (got {config.epochs})")
    if config.max_steps is not None and config.max_steps < 1:
        problems.append(f"max_steps must be at least 1 (got {config.max_steps})")
    if config.resolution < 8 or config.resolution % 8:
        problems.append(f"resolution must be a multiple of 8 (got {config.resolution})")
    if config.mixed_precision not in MIXED_PRECISIONS:
        problems.append(f"mixed_precision must be one of {sorted(MIXED_PRECISIONS)}")
    elif config.mixed_precision == "fp16" and not device.startswith("cuda"):
        problems.append("fp16 mixed precision needs a CUDA device; use 'no' or 'bf16'")
    missing = [str(e.image_path) for e in examples if not Path(e.image_path).is_file()]
    if missing:
        problems.append(f"{len(missing)} image(s) not found, e.g. {missing[0]}")
    if problems:
        raise TrainingError("cannot train: " + "; ".join(problems))


def load_training_image(path: Path, resolution: int) -> torch.Tensor:
    """An image as a 3×res×res tensor in [-1, 1]: shorter side resized, then centre-cropped."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise TrainingError(f"cannot read training image {path}: {error}") from error
    image = ImageOps.fit(image, (resolution, resolution), method=Image.Resampling.LANCZOS)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    pixels = pixels.view(resolution, resolution, 3).permute(2, 0, 1).float()
    return pixels / 127.5 - 1.0


def tag_frequency(captions: Sequence[str]) -> dict[str, int]:
    """How often each comma-separated tag occurs, as kohya records it."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(tag.strip() for tag in caption.split(",") if tag.strip())
    return dict(counts)


# --- base model ----------------------------------------------------------------------------------


def _sha256_and_legacy_hash(path: Path) -> tuple[str, str]:
    """sha256 of the whole file, and the webui's old 8-digit hash (64 KiB at offset 1 MiB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
        stream.seek(0x100000)
        legacy = hashlib.sha256(stream.read(0x10000)).hexdigest()[:8]
    return digest.hexdigest(), legacy


def _unet_weights_file(source: ModelSource) -> Path | None:
    """The file that identifies the base model: the checkpoint, or the UNet weights of a folder."""
    if source.kind is SourceKind.SINGLE_FILE:
        return Path(source.location)
    if source.kind is SourceKind.FOLDER:
        candidates = sorted((Path(source.location) / "unet").glob("diffusion_pytorch_model*"))
        return candidates[0] if candidates else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source.location, "unet/diffusion_pytorch_model.safetensors")
    return Path(cached) if isinstance(cached, str) else None


def _base_model_name(source: ModelSource) -> str:
    return source.location if source.kind is SourceKind.HUB else Path(source.location).name


def _load_base_model(base_model: str, dtype: torch.dtype) -> Any:
    try:
        pipe = load_pipeline(base_model, dtype)
    except GenerationError as error:
        raise TrainingError(str(error)) from error
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise TrainingError(
            f"{base_model} is an SDXL model; the built-in trainer trains SD1.x LoRAs "
            "(use the kohya backend for SDXL)"
        )
    return pipe


# --- the training loop ---------------------------------------------------------------------------


def train_lora(
    config: TrainingConfig,
    examples: Sequence[TrainingExample],
    output_file: Path,
    on_progress: Callable[[TrainingProgress], None] | None = None,
) -> TrainingResult:
    """Train a UNet LoRA on `examples` and save it as a kohya-format file at `output_file`."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    device = torch_device(config.device)
    _validate(config, examples, device)
    started_at = time.time()
    weight_dtype = MIXED_PRECISIONS[config.mixed_precision]
    generator = torch.Generator(device="cpu").manual_seed(config.seed)

    # 1. The frozen base model. The noise scheduler is DDPM with the model's own betas and
    #    prediction type, as in diffusers' training scripts.
    pipe = _load_base_model(config.base_model, weight_dtype)
    tokenizer, text_encoder, vae, unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.prediction_type
    for model in (text_encoder, vae, unet):
        model.requires_grad_(False)
        model.to(device)
    text_encoder.eval()
    vae.eval()

    # 2. The adapter: the only trainable weights, kept in fp32 even when the base is fp16/bf16.
    #    peft's gaussian init draws from the global RNG: seed it without disturbing the caller's.
    with torch.random.fork_rng(devices=_cuda_indices(device)):
        torch.manual_seed(config.seed)
        unet.add_adapter(
            LoraConfig(
                r=config.rank,
                lora_alpha=config.alpha,
                init_lora_weights="gaussian",
                target_modules=UNET_TARGET_MODULES,
            )
        )
    cast_training_params(unet, dtype=torch.float32)
    lora_parameters = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_parameters, lr=config.learning_rate)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    autocast = (
        torch.autocast(device_type=device.split(":")[0], dtype=weight_dtype)
        if config.mixed_precision != "no"
        else nullcontext()
    )
    scaler = torch.amp.GradScaler("cuda", enabled=config.mixed_precision == "fp16")

    # 3. The schedule: max_steps if given, else whole epochs over the examples.
    batches_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = config.max_steps or config.epochs * batches_per_epoch
    epochs = math.ceil(total_steps / batches_per_epoch)

    losses: list[float] = []
    loop_started = time.perf_counter()
    step = 0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(examples), generator=generator).tolist()
        for first in range(0, len(order), config.batch_size):
            if step >= total_steps:
                break
            batch = [examples[i] for i in order[first : first + config.batch_size]]

            # Images → latents, captions → text embeddings (both frozen, so no gradients).
            with torch.no_grad():
                pixels = torch.stack(
                    [load_training_image(e.image_path, config.resolution) for e in batch]
                ).to(device, weight_dtype)
                latent_dist = vae.encode(pixels).latent_dist
                latents = latent_dist.sample(generator=generator) * vae.config.scaling_factor
                token_ids = tokenizer(
                    [e.caption for e in batch],
                    padding="max_length",
                    max_length=tokenizer.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids.to(device)
                text_embeddings = text_encoder(token_ids)[0]

            # Forward diffusion: noise the latents at a random timestep per image.
            noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
            timesteps = torch.randint(
                0, noise_scheduler.config.num_train_timesteps, (len(batch),), generator=generator
            ).to(device)
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
            if prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            else:
                target = noise

            # The UNet with the adapter predicts the target; only the adapter learns.
            with autocast:
                prediction = unet(noisy_latents, timesteps, text_embeddings).sample
            loss = F.mse_loss(prediction.float(), target.float())
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss.item()} at step {step + 1}; "
                    "lower the learning rate or use mixed_precision='no'"
                )
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(lora_parameters, MAX_GRAD_NORM)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            step += 1
            losses.append(loss.item())
            if on_progress is not None:
                on_progress(_progress(step, total_steps, epoch, losses[-1], loop_started))

    # 4. Save the adapter in the kohya format, with kohya's metadata and ours.
    source = resolve_model_source(config.base_model)
    weights_file = _unet_weights_file(source)
    base_hash, base_legacy_hash = (
        _sha256_and_legacy_hash(weights_file) if weights_file else ("", "None")
    )
    tensors = peft_unet_to_kohya(get_peft_model_state_dict(unet), config.alpha)
    title = config.title or Path(output_file).stem
    metadata = kohya_metadata(
        base_model_name=_base_model_name(source),
        rank=config.rank,
        alpha=config.alpha,
        learning_rate=config.learning_rate,
        steps=step,
        epochs=epochs,
        batch_size=config.batch_size,
        resolution=config.resolution,
        num_images=len(examples),
        seed=config.seed,
        tag_frequency=tag_frequency([e.caption for e in examples]),
        dataset_hash=config.dataset_hash,
        base_model_hash=base_hash,
        trigger_word=config.trigger_word,
        title=title,
        extra={
            "ss_sd_model_hash": base_legacy_hash,
            "ss_mixed_precision": config.mixed_precision,
            "ss_gradient_checkpointing": config.gradient_checkpointing,
            "ss_training_started_at": started_at,
            "ss_training_finished_at": time.time(),
            "ss_v2": False,
            "ss_resize_interpolation": "lanczos",
            "modelspec.prediction_type": prediction_type,
            "lora_pipeline.final_loss": losses[-1],
        },
    )
    sha256 = save_kohya_lora(Path(output_file), tensors, metadata)
    del pipe, unet, text_encoder, vae, optimizer
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return TrainingResult(
        path=Path(output_file),
        sha256=sha256,
        steps=step,
        epochs=epochs,
        losses=losses,
        final_loss=losses[-1],
        seconds=time.time() - started_at,
        metadata=metadata,
    )


def _cuda_indices(device: str) -> list[int]:
    if not device.startswith("cuda"):
        return []
    index = torch.device(device).index
    return [torch.cuda.current_device() if index is None else index]


def _progress(
    step: int, total_steps: int, epoch: int, loss: float, loop_started: float
) -> TrainingProgress:
    elapsed = max(time.perf_counter() - loop_started, 1e-9)
    it_per_s = step / elapsed
    return TrainingProgress(
        step=step,
        total_steps=total_steps,
        epoch=epoch,
        loss=loss,
        it_per_s=it_per_s,
        eta_s=(total_steps - step) / it_per_s,
    )
