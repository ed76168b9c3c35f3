"""The built-in LoRA trainer: diffusers + peft, written to be read top to bottom.

It follows diffusers' `train_text_to_image_lora(_sdxl).py` and kohya's `train_network.py`: the base
model (SD1.x or SDXL, a diffusers folder or a single-file checkpoint) is loaded and frozen, LoRA
adapters are added where kohya adds them (UNet attention and feed-forward; optionally the text
encoder(s) and, with LoCon, the convolutions), and for each batch the images are encoded to
latents, noised at a random timestep, and the UNet learns to predict the noise. Only the adapters
train. The result is saved in the kohya format, so ComfyUI, A1111 and kohya tools load it as they
load any community LoRA.

A run can stop at any step (crash, cancel) and resume from its last saved state with the optimizer,
learning-rate schedule, RNG and step count intact: the resumed run trains exactly the steps the
first one did not, and on the CPU gives bit-for-bit the LoRA an uninterrupted run gives.

A run can also start from an earlier LoRA file (`init_lora`, what kohya calls
`--network_weights`) instead of fresh adapters: a retrain of a release that failed its gate
continues from it. A saved state of the run wins over it (the state holds the newer weights).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lora_pipeline.config import torch_device
from lora_pipeline.files import atomic_path
from lora_pipeline.generation.local import (
    GenerationError,
    load_pipeline,
    resolve_model_source,
)
from lora_pipeline.training.base_model import (
    base_model_identity,
    base_model_name,
    sha256_and_legacy_hash,
    unet_weights_file,
)
from lora_pipeline.training.checkpoint import (
    TrainingState,
    clear_states,
    fingerprint,
    load_latest_state,
    save_state,
)
from lora_pipeline.training.data import (
    Sample,
    TrainingDataError,
    TrainingExample,
    batches_per_epoch,
    epoch_batches,
    load_pixels,
    place_examples,
    shuffle_caption,
    tag_frequency,
)
from lora_pipeline.training.errors import OOM_ADVICE, TrainingError, TrainingInterrupted
from lora_pipeline.training.experiment import library_versions
from lora_pipeline.training.kohya_format import (
    LoraFormatError,
    kohya_metadata,
    new_session_id,
    read_kohya_lora,
    save_kohya_lora,
)
from lora_pipeline.training.network import (
    LoraMismatchError,
    LoraTarget,
    add_lora,
    kohya_tensors,
    load_kohya_tensors,
    lora_parameters,
    restore_lora_parameters,
    text_encoder_targets,
    unet_targets,
)
from lora_pipeline.training.options import (
    TrainingConfig,
    auto_mixed_precision,
    auto_save_every,
    check_config,
    fingerprinted,
    resolve_config,
)
from lora_pipeline.training.reports import EpochReport, TrainingProgress, TrainingResult

# The config, reports and errors live in their own modules, so that the job and the kohya backend
# need not import the built-in trainer; they stay importable from here, where callers know them.
__all__ = [
    "EpochReport",
    "TrainingConfig",
    "TrainingError",
    "TrainingExample",
    "TrainingInterrupted",
    "TrainingProgress",
    "TrainingResult",
    "resolve_config",
    "tag_frequency",
    "train_lora",
]

PRECISION_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MAX_GRAD_NORM = 1.0


ProgressHook = Callable[[TrainingProgress], None]
EpochHook = Callable[[EpochReport], None]
StopHook = Callable[[], bool]
LogHook = Callable[[str], None]


# --- checks and helpers --------------------------------------------------------------------------


def _check_examples(examples: Sequence[TrainingExample]) -> None:
    if not examples:
        raise TrainingError("no training examples: a LoRA needs at least one captioned image")
    missing = [str(e.image_path) for e in examples if not Path(e.image_path).is_file()]
    if missing:
        raise TrainingError(f"cannot train: {len(missing)} image(s) not found, e.g. {missing[0]}")


def _cuda_indices(device: str) -> list[int]:
    if not device.startswith("cuda"):
        return []
    index = torch.device(device).index
    return [torch.cuda.current_device() if index is None else index]


def _native_resolution(pipe: Any) -> int | None:
    sample_size = getattr(pipe.unet.config, "sample_size", None)
    if not isinstance(sample_size, int):
        return None
    return sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)


# --- the run -------------------------------------------------------------------------------------


class _TrainingRun:
    """One training run: models, adapters, optimizer, data and the loop, in reading order."""

    def __init__(
        self,
        config: TrainingConfig,
        examples: Sequence[TrainingExample],
        output_file: Path,
        on_progress: ProgressHook | None,
        on_epoch: EpochHook | None,
        should_stop: StopHook | None,
        log: LogHook | None,
    ) -> None:
        self.device = torch_device(config.device)
        _check_examples(examples)
        self.examples = list(examples)
        self.output_file = Path(output_file)
        self.on_progress = on_progress or (lambda _: None)
        self.on_epoch = on_epoch or (lambda _: None)
        self.should_stop = should_stop or (lambda: False)
        self.log = log or (lambda _: None)
        self.started_at = time.time()
        try:
            self.source = resolve_model_source(config.base_model)
        except GenerationError as error:
            raise TrainingError(str(error)) from error
        self.config = config
        self.losses: list[float] = []
        self.history: list[int] = []
        self.global_step = 0
        self.epoch_files: list[str] = []
        self.init_lora_hash = ""
        # One kohya session id for every file this run writes (epochs and final).
        self.session_id = new_session_id()

    # 1. The frozen base model, and the settings it implies.
    def load_models(self) -> None:
        from diffusers import DDPMScheduler

        # The precision decides how the model is loaded: check the options before loading
        # gigabytes (the unset ones after, once the smart defaults filled them).
        check_config(self.config, self.device)
        requested = self.config.mixed_precision
        precision = auto_mixed_precision(self.device) if requested == "auto" else requested
        self.weight_dtype = PRECISION_DTYPES[precision]
        try:
            pipe = load_pipeline(
                self.config.base_model, self.weight_dtype, self.config.single_file_config
            )
        except GenerationError as error:
            raise TrainingError(str(error)) from error
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.sdxl = getattr(pipe, "text_encoder_2", None) is not None
        self.unet, self.vae = pipe.unet, pipe.vae
        self.text_encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if self.sdxl else [])
        self.tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if self.sdxl else [])
        self.config = resolve_config(
            self.config,
            len(self.examples),
            "sdxl" if self.sdxl else "sd15",
            _native_resolution(pipe),
            self.device,
        )
        check_config(self.config, self.device)
        # The noise scheduler is DDPM with the model's own betas and prediction type, as in
        # diffusers' and kohya's training scripts.
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        # SDXL's VAE overflows in fp16: it runs in fp32 (its config says so).
        self.vae_dtype = (
            torch.float32 if getattr(self.vae.config, "force_upcast", False) else self.weight_dtype
        )
        self.vae.to(self.device)
        if self.vae.dtype != self.vae_dtype:
            self.vae.to(dtype=self.vae_dtype)
        for model in (self.unet, *self.text_encoders):
            model.requires_grad_(False)
            model.to(self.device)
        self.vae.requires_grad_(False)
        self.vae.eval()

    # 2. The adapters: the only trainable weights, kept in fp32 even when the base is fp16/bf16.
    def add_adapters(self) -> None:
        config = self.config
        self.unet_targets = unet_targets(
            self.unet, config.rank, config.alpha, config.conv_rank, config.conv_alpha
        )
        prefixes = ["lora_te1_", "lora_te2_"] if self.sdxl else ["lora_te_"]
        self.te_targets = [
            text_encoder_targets(encoder, prefix, config.rank, config.alpha)
            if config.train_text_encoder
            else []
            for encoder, prefix in zip(self.text_encoders, prefixes, strict=True)
        ]
        # peft draws the initial weights from the global RNG: seed it without disturbing ours.
        with torch.random.fork_rng(devices=_cuda_indices(self.device)):
            torch.manual_seed(config.seed)
            self.unet_parameters = add_lora(self.unet, self.unet_targets)
            self.te_parameters = [
                parameter
                for encoder, targets in zip(self.text_encoders, self.te_targets, strict=True)
                if targets
                for parameter in add_lora(encoder, targets)
            ]
        for parameter in (*self.unet_parameters, *self.te_parameters):
            parameter.data = parameter.data.float()
        if config.init_lora:
            self.init_from_lora(Path(config.init_lora))
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            for encoder, targets in zip(self.text_encoders, self.te_targets, strict=True):
                if targets:
                    encoder.gradient_checkpointing_enable()
                    # Checkpointed blocks only backpropagate into inputs that need a gradient.
                    encoder.enable_input_require_grads()
        self.unet.train()
        for encoder, targets in zip(self.text_encoders, self.te_targets, strict=True):
            encoder.train(bool(targets))

    def _adapted(self) -> list[tuple[torch.nn.Module, list[LoraTarget]]]:
        pairs = [(self.unet, self.unet_targets)]
        pairs += [(e, t) for e, t in zip(self.text_encoders, self.te_targets, strict=True) if t]
        return pairs

    def init_from_lora(self, path: Path) -> None:
        """Overwrite the fresh adapters with those of an earlier LoRA file; a file that does not
        fit the network stops the run here, before the data is prepared or a step trained."""
        try:
            tensors, header = read_kohya_lora(path)
            load_kohya_tensors(self._adapted(), tensors)
        except (LoraFormatError, LoraMismatchError) as error:
            raise TrainingError(f"cannot start from init_lora {path}: {error}") from error
        self.init_lora_hash = header.get("sshs_model_hash", "")
        self.log(f"starting from the weights of {path.name}")

    # 3. Optimizer, learning-rate schedule and (fp16 only) loss scaling.
    def build_optimizer(self, total_steps: int) -> None:
        from diffusers.optimization import get_scheduler

        config = self.config
        groups = [{"params": self.unet_parameters, "lr": config.learning_rate}]
        if self.te_parameters:
            groups.append({"params": self.te_parameters, "lr": config.text_encoder_lr})
        if config.optimizer == "adamw8bit":
            try:
                import bitsandbytes
            except ImportError as error:
                raise TrainingError(
                    "optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes, CUDA only); "
                    "use optimizer 'adamw'"
                ) from error
            self.optimizer = bitsandbytes.optim.AdamW8bit(groups, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
        name = config.lr_scheduler
        if name == "constant" and config.lr_warmup_steps:
            name = "constant_with_warmup"
        self.lr_scheduler = get_scheduler(
            name,
            self.optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=total_steps,
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.mixed_precision == "fp16")
        self.autocast = (
            torch.autocast(device_type=self.device.split(":")[0], dtype=self.weight_dtype)
            if config.mixed_precision != "no"
            else nullcontext()
        )

    # 4. The data: buckets, the epoch plan, and (optionally) the latents, encoded once.
    def prepare_data(self) -> None:
        config = self.config
        try:
            self.samples = place_examples(self.examples, config.resolution, config.enable_bucket)
        except TrainingDataError as error:
            raise TrainingError(str(error)) from error
        self.batches_per_epoch = batches_per_epoch(self.samples, config.batch_size)
        self.total_steps = config.max_steps or config.epochs * self.batches_per_epoch
        self.epochs = math.ceil(self.total_steps / self.batches_per_epoch)
        if config.save_every_n_epochs is None:
            self.config = config = replace(config, save_every_n_epochs=auto_save_every(self.epochs))
        self.latent_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if config.cache_latents:
            self.log(f"caching the latents of {len(self.samples)} images")
            for sample in self.samples:
                self.latent_cache[sample.index] = self._encode([sample])
            if self.device.startswith("cuda") and not config.sample_prompts:
                self.vae.to("cpu")  # not needed again: give its memory to the UNet

    def _encode(self, batch: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's latent distribution (mean, std) of a batch of images of one bucket."""
        try:
            pixels = torch.stack(
                [load_pixels(self.examples[s.index].image_path, s.bucket) for s in batch]
            )
        except TrainingDataError as error:
            raise TrainingError(str(error)) from error
        with torch.no_grad():
            distribution = self.vae.encode(pixels.to(self.device, self.vae_dtype)).latent_dist
        return distribution.mean.float().cpu(), distribution.std.float().cpu()

    def fingerprint(self) -> str:
        data = [(Path(e.image_path).name, e.caption) for e in self.examples]
        return fingerprint(
            {
                "settings": fingerprinted(self.config),
                "data": data,
                "base": base_model_identity(self.source),
            }
        )

    # 5. Resume: the newest state of this very run, if a previous one stopped.
    def restore(self) -> int:
        self.state_dir = (
            Path(self.config.state_dir) / self.fingerprint()[:16] if self.config.state_dir else None
        )
        state = load_latest_state(self.state_dir, self.fingerprint()) if self.state_dir else None
        self.generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
        if state is None:
            return 0
        # The state holds the run's newest weights: they replace any init_lora ones.
        self._restore_adapters(state.weights)
        self.optimizer.load_state_dict(state.optimizer)
        self.lr_scheduler.load_state_dict(state.lr_scheduler)
        if state.scaler:
            self.scaler.load_state_dict(state.scaler)
        if state.rng is not None:
            self.generator.set_state(state.rng)
        self.global_step, self.losses, self.history = state.global_step, state.losses, state.history
        self.started_at = state.started_at
        self.log(f"resuming from step {state.global_step} (epoch {state.epoch})")
        return state.global_step

    def _models_with_adapters(self) -> dict[str, torch.nn.Module]:
        models = {"unet": self.unet}
        models.update({f"te{i}": encoder for i, encoder in enumerate(self.text_encoders)})
        return models

    def _restore_adapters(self, weights: dict[str, torch.Tensor]) -> None:
        for key, model in self._models_with_adapters().items():
            prefix = f"{key}."
            saved = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
            restore_lora_parameters(model, saved)

    def _state(self, epoch: int) -> TrainingState:
        weights = {
            f"{key}.{name}": tensor
            for key, model in self._models_with_adapters().items()
            for name, tensor in lora_parameters(model).items()
        }
        return TrainingState(
            fingerprint=self.fingerprint(),
            global_step=self.global_step,
            epoch=epoch,
            losses=list(self.losses),
            history=list(self.history),
            started_at=self.started_at,
            weights=weights,
            optimizer=self.optimizer.state_dict(),
            lr_scheduler=self.lr_scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {},
            rng=self.generator.get_state(),
        )

    def save_state(self, epoch: int) -> Path | None:
        if self.state_dir is None:
            return None
        return save_state(self.state_dir, self._state(epoch), self.config.keep_last_n_epochs)

    # 6. One optimisation step.
    def _text_embeddings(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden, pooled = [], None
        for tokenizer, encoder, targets in zip(
            self.tokenizers, self.text_encoders, self.te_targets, strict=True
        ):
            token_ids = tokenizer(
                captions,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            grad = torch.enable_grad() if targets else torch.no_grad()
            with grad, self.autocast:
                if not self.sdxl:
                    return encoder(token_ids)[0], None
                # SDXL conditions on the penultimate layer of both encoders, and on the pooled
                # projection of the second.
                output = encoder(token_ids, output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
            pooled = output[0]
        return torch.cat(hidden, dim=-1), pooled

    def _latents(self, batch: Sequence[Sample]) -> torch.Tensor:
        if self.latent_cache:
            mean = torch.cat([self.latent_cache[s.index][0] for s in batch])
            std = torch.cat([self.latent_cache[s.index][1] for s in batch])
        else:
            mean, std = self._encode(batch)
        noise = torch.randn(mean.shape, generator=self.generator)
        latents = (mean + std * noise) * self.vae.config.scaling_factor
        return latents.to(self.device, self.weight_dtype)

    def _time_ids(self, batch: Sequence[Sample]) -> torch.Tensor:
        rows = [[*s.original_size, *s.crop_top_left, s.bucket[1], s.bucket[0]] for s in batch]
        return torch.tensor(rows, dtype=self.weight_dtype, device=self.device)

    def _captions(self, batch: Sequence[Sample]) -> list[str]:
        captions = [self.examples[s.index].caption for s in batch]
        if not self.config.shuffle_caption:
            return captions
        return [shuffle_caption(c, self.config.keep_tokens, self.generator) for c in captions]

    def _loss(
        self, prediction: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        loss = F.mse_loss(prediction.float(), target.float(), reduction="none")
        loss = loss.mean(dim=list(range(1, loss.ndim)))
        gamma = self.config.min_snr_gamma
        if gamma:
            from diffusers.training_utils import compute_snr

            # Min-SNR weighting (Hang et al. 2023): easy, low-noise timesteps count less.
            snr = compute_snr(self.noise_scheduler, timesteps)
            weight = snr.clamp(max=gamma) / (
                snr + 1 if self.prediction_type == "v_prediction" else snr
            )
            loss = loss * weight
        return loss.mean()

    def train_step(self, batch: Sequence[Sample]) -> float:
        config = self.config
        latents = self._latents(batch)
        captions = self._captions(batch)
        noise = torch.randn(latents.shape, generator=self.generator)
        if config.noise_offset:
            # Noise offset: a per-channel shift lets the model learn very dark and bright images.
            offset = torch.randn(
                (latents.shape[0], latents.shape[1], 1, 1), generator=self.generator
            )
            noise = noise + config.noise_offset * offset
        noise = noise.to(self.device, latents.dtype)
        timesteps = torch.randint(
            0,
            self.noise_scheduler.config.num_train_timesteps,
            (len(batch),),
            generator=self.generator,
        ).to(self.device)
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        embeddings, pooled = self._text_embeddings(captions)
        extra = (
            {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": self._time_ids(batch)}}
            if self.sdxl
            else {}
        )
        with self.autocast:
            prediction = self.unet(noisy_latents, timesteps, embeddings, **extra).sample
        loss = self._loss(prediction, target, timesteps)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss.item()} at step {self.global_step + 1}; "
                "lower the learning rate or use mixed_precision='no'"
            )
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_([*self.unet_parameters, *self.te_parameters], MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    # 7. Saving: kohya files, per-epoch snapshots and samples.
    def lora_tensors(self) -> dict[str, torch.Tensor]:
        tensors = kohya_tensors(self.unet, self.unet_targets)
        for encoder, targets in zip(self.text_encoders, self.te_targets, strict=True):
            tensors.update(kohya_tensors(encoder, targets))
        return tensors

    def metadata(self, epoch: int, base_hash: str, base_legacy_hash: str) -> dict[str, str]:
        config = self.config
        targets: list[LoraTarget] = [*self.unet_targets]
        for te_targets in self.te_targets:
            targets.extend(te_targets)
        network_args = (
            {"conv_dim": str(config.conv_rank), "conv_alpha": str(config.conv_alpha)}
            if config.conv_rank
            else None
        )
        return kohya_metadata(
            base_model_name=base_model_name(self.source),
            rank=config.rank,
            alpha=config.alpha,
            learning_rate=config.learning_rate,
            steps=self.global_step,
            epochs=epoch,
            batch_size=config.batch_size,
            resolution=config.resolution,
            num_images=len(self.examples),
            seed=config.seed,
            tag_frequency=tag_frequency([e.caption for e in self.examples]),
            dataset_hash=config.dataset_hash,
            base_model_hash=base_hash,
            trigger_word=config.trigger_word,
            title=config.title or self.output_file.stem,
            base_model_version="sdxl" if self.sdxl else "sd15",
            enable_bucket=config.enable_bucket,
            shuffle_caption=config.shuffle_caption,
            keep_tokens=config.keep_tokens,
            extra={
                "ss_sd_model_hash": base_legacy_hash,
                "ss_num_epochs": self.epochs,
                "ss_max_train_steps": self.total_steps,
                "ss_num_batches_per_epoch": self.batches_per_epoch,
                "ss_network_args": json.dumps(network_args) if network_args else None,
                "ss_network_train_unet_only": not config.train_text_encoder,
                "ss_text_encoder_lr": config.text_encoder_lr if config.train_text_encoder else None,
                "ss_unet_lr": config.learning_rate,
                "ss_optimizer": (
                    "bitsandbytes.optim.adamw.AdamW8bit"
                    if config.optimizer == "adamw8bit"
                    else "torch.optim.adamw.AdamW"
                ),
                "ss_lr_scheduler": config.lr_scheduler,
                "ss_lr_warmup_steps": config.lr_warmup_steps,
                "ss_noise_offset": config.noise_offset or None,
                "ss_min_snr_gamma": config.min_snr_gamma,
                "ss_mixed_precision": config.mixed_precision,
                "ss_gradient_checkpointing": config.gradient_checkpointing,
                "ss_cache_latents": config.cache_latents,
                "ss_session_id": self.session_id,
                "ss_training_started_at": self.started_at,
                "ss_training_finished_at": time.time(),
                "ss_resize_interpolation": "lanczos",
                "modelspec.prediction_type": self.prediction_type,
                "lora_pipeline.final_loss": self.losses[-1] if self.losses else None,
                "lora_pipeline.modules": len(targets),
                **self._init_metadata(),
            },
        )

    def _init_metadata(self) -> dict[str, str]:
        if not self.config.init_lora:
            return {}
        values = {"lora_pipeline.init_lora": Path(self.config.init_lora).name}
        if self.init_lora_hash:
            values["lora_pipeline.init_lora_model_hash"] = self.init_lora_hash
        return values

    def save_epoch_file(self, epoch: int) -> Path:
        folder = self.output_file.parent / "epochs"
        path = folder / f"{self.output_file.stem}-{epoch:06d}{self.output_file.suffix}"
        save_kohya_lora(path, self.lora_tensors(), self.metadata(epoch, "", "None"))
        self.epoch_files.append(str(path))
        keep = self.config.keep_last_n_epochs
        for old in self.epoch_files[:-keep]:
            Path(old).unlink(missing_ok=True)
        self.epoch_files = self.epoch_files[-keep:]
        return path

    def sample_images(self, epoch: int) -> list[str]:
        config = self.config
        if not config.sample_prompts:
            return []
        folder = self.output_file.parent / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        self.vae.to(self.device)
        self.unet.eval()
        paths = []
        try:
            with torch.no_grad(), self.autocast:
                for index, prompt in enumerate(config.sample_prompts):
                    image = self.pipe(
                        prompt=prompt,
                        negative_prompt=config.sample_negative_prompt or None,
                        num_inference_steps=config.sample_steps,
                        guidance_scale=config.sample_cfg,
                        width=config.resolution,
                        height=config.resolution,
                        generator=torch.Generator("cpu").manual_seed(config.sample_seed + index),
                    ).images[0]
                    path = folder / f"{self.output_file.stem}-{epoch:06d}-{index}.png"
                    # The UI shows a sample as soon as the epoch is reported: never half of one.
                    with atomic_path(path) as temporary:
                        image.save(temporary, format="PNG")
                    paths.append(str(path))
        finally:
            self.unet.train()
        return paths

    def save_final(self) -> tuple[str, dict[str, str]]:
        weights_file = unet_weights_file(self.source)
        base_hash, base_legacy_hash = (
            sha256_and_legacy_hash(weights_file) if weights_file else ("", "None")
        )
        metadata = self.metadata(self.epochs, base_hash, base_legacy_hash)
        sha256 = save_kohya_lora(self.output_file, self.lora_tensors(), metadata)
        return sha256, metadata

    # 8. The loop.
    def train(self) -> None:
        loop_started, resumed_at = time.perf_counter(), self.global_step
        epoch_started = time.perf_counter()
        for epoch in range(self.global_step // self.batches_per_epoch + 1, self.epochs + 1):
            batches = epoch_batches(self.samples, self.config.batch_size, self.config.seed, epoch)
            done_in_epoch = self.global_step - (epoch - 1) * self.batches_per_epoch
            for indices in batches[done_in_epoch:]:
                if self.global_step >= self.total_steps:
                    break
                loss = self.train_step([self.samples[i] for i in indices])
                self.global_step += 1
                self.losses.append(loss)
                self.history.append(self.global_step)
                self.on_progress(self._progress(epoch, loop_started, resumed_at))
                epoch_done = self.global_step in (epoch * self.batches_per_epoch, self.total_steps)
                if not epoch_done and self.should_stop():
                    raise TrainingInterrupted(self.global_step, self.save_state(epoch))
            self.end_epoch(epoch, time.perf_counter() - epoch_started)
            epoch_started = time.perf_counter()
            if self.global_step < self.total_steps and self.should_stop():
                raise TrainingInterrupted(self.global_step, self.save_state(epoch + 1))

    def end_epoch(self, epoch: int, seconds: float) -> None:
        first = (epoch - 1) * self.batches_per_epoch
        epoch_losses = self.losses[first : self.global_step]
        report = EpochReport(
            epoch=epoch,
            epochs=self.epochs,
            step=self.global_step,
            total_steps=self.total_steps,
            mean_loss=sum(epoch_losses) / max(len(epoch_losses), 1),
            seconds=seconds,
        )
        last = epoch == self.epochs
        if epoch % self.config.save_every_n_epochs == 0 and not last:
            report.lora_path = str(self.save_epoch_file(epoch))
            report.state_path = str(self.save_state(epoch + 1) or "") or None
        if epoch % self.config.save_every_n_epochs == 0 or last:
            report.sample_paths = self.sample_images(epoch)
        self.on_epoch(report)

    def _progress(self, epoch: int, loop_started: float, resumed_at: int) -> TrainingProgress:
        elapsed = max(time.perf_counter() - loop_started, 1e-9)
        it_per_s = (self.global_step - resumed_at) / elapsed
        return TrainingProgress(
            step=self.global_step,
            total_steps=self.total_steps,
            epoch=epoch,
            loss=self.losses[-1],
            it_per_s=it_per_s,
            eta_s=(self.total_steps - self.global_step) / it_per_s if it_per_s else 0.0,
            lr=float(self.lr_scheduler.get_last_lr()[0]),
        )

    def release(self) -> None:
        for name in ("pipe", "unet", "vae", "text_encoders", "optimizer", "latent_cache"):
            self.__dict__.pop(name, None)
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _out_of_memory(error: BaseException, config: TrainingConfig) -> TrainingError:
    return TrainingError(
        f"out of memory while training (batch size {config.batch_size}, resolution "
        f"{config.resolution}, rank {config.rank}): {OOM_ADVICE}. ({str(error).splitlines()[0]})"
    )


def train_lora(
    config: TrainingConfig,
    examples: Sequence[TrainingExample],
    output_file: Path,
    on_progress: ProgressHook | None = None,
    *,
    on_epoch: EpochHook | None = None,
    should_stop: StopHook | None = None,
    log: LogHook | None = None,
) -> TrainingResult:
    """Train a LoRA on `examples` and save it as a kohya-format file at `output_file`.

    With `config.state_dir` set, the run saves a resumable state at every saved epoch (and when
    `should_stop` says so), and resumes from the newest state of the same run if there is one.
    """
    run = _TrainingRun(config, examples, output_file, on_progress, on_epoch, should_stop, log)
    try:
        run.load_models()
        run.add_adapters()
        run.prepare_data()
        run.build_optimizer(run.total_steps)
        resumed_from = run.restore()
        run.train()
        sha256, metadata = run.save_final()
    except torch.OutOfMemoryError as error:
        raise _out_of_memory(error, run.config) from error
    finally:
        run.release()
    if run.state_dir is not None:
        clear_states(run.state_dir)
    _drop_empty(Path(output_file).parent / "epochs")
    return TrainingResult(
        path=Path(output_file),
        sha256=sha256,
        steps=run.global_step,
        epochs=run.epochs,
        losses=run.losses,
        final_loss=run.losses[-1],
        seconds=time.time() - run.started_at,
        metadata=metadata,
        config=run.config.to_dict(),
        history=run.history,
        resumed_from_step=resumed_from,
        epoch_files=[p for p in run.epoch_files if Path(p).is_file()],
        versions=library_versions("lora_pipeline", "torch", "diffusers", "peft", "transformers"),
    )


def _drop_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)
