"""The trainer's options on the tiny model: smart defaults, text encoder and LoCon adapters that
diffusers applies, per-epoch files and samples, the learning-rate schedule, out-of-memory advice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_pipeline.training import trainer as trainer_module
from lora_pipeline.training.kohya_format import read_kohya_lora
from lora_pipeline.training.trainer import (
    EpochReport,
    TrainingConfig,
    TrainingError,
    TrainingExample,
    TrainingProgress,
    train_lora,
)


def _config(base_model: Path, **changes: object) -> TrainingConfig:
    settings = dict(
        base_model=str(base_model),
        rank=4,
        alpha=4.0,
        learning_rate=1e-3,
        batch_size=2,
        resolution=32,
        seed=5,
        device="cpu",
    )
    return TrainingConfig(**(settings | changes))  # type: ignore[arg-type]


def test_unset_values_take_the_smart_defaults(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    config = TrainingConfig(base_model=str(tiny_sd), max_steps=1, device="cpu")
    result = train_lora(config, examples, tmp_path / "d.safetensors")
    # 4 images: 20 epochs at batch 1 (seed 002), rank 32 / alpha 16 / lr 1e-4, and the model's
    # native resolution (the tiny UNet's 16 latent pixels × 2 = 32 px; SD1.5 gives 512)
    expected = {"epochs": 20, "batch_size": 1, "rank": 32, "alpha": 16, "learning_rate": 1e-4}
    assert {k: result.config[k] for k in expected} == expected
    assert result.config["resolution"] == 32
    assert result.config["mixed_precision"] == "no"  # auto on the CPU
    assert result.metadata["ss_network_dim"] == "32"
    assert result.metadata["ss_network_alpha"] == "16.0"  # kohya writes alpha as a float


def test_text_encoder_and_locon_adapters_load_in_diffusers(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    config = _config(tiny_sd, max_steps=1, train_text_encoder=True, conv_rank=2, conv_alpha=1.0)
    result = train_lora(config, examples, tmp_path / "te.safetensors")
    tensors, metadata = read_kohya_lora(result.path)
    modules = {key.split(".", 1)[0] for key in tensors}
    te_modules = {m for m in modules if m.startswith("lora_te_text_model_encoder_layers_")}
    assert len(te_modules) == 2 * 6  # 2 layers × q, k, v, out_proj, fc1, fc2
    conv = tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"]
    assert conv.shape == (2, 32, 3, 3)  # LoCon: conv rank on the 3×3 convolution
    assert float(tensors["lora_unet_down_blocks_0_resnets_0_conv1.alpha"]) == 1.0
    assert "lora_unet_down_blocks_0_resnets_0_time_emb_proj" in modules
    assert metadata["ss_network_args"] == '{"conv_dim": "2", "conv_alpha": "1.0"}'
    assert metadata["ss_network_train_unet_only"] == "False"

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True)
    pipe.load_lora_weights(str(result.path), adapter_name="trained")
    unet_loaded = get_peft_model_state_dict(pipe.unet, adapter_name="trained")
    te_loaded = get_peft_model_state_dict(pipe.text_encoder, adapter_name="trained")
    assert len(unet_loaded) + len(te_loaded) == 2 * len(modules), "every module is applied"


def test_epoch_files_samples_and_reports(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    reports: list[EpochReport] = []
    config = _config(
        tiny_sd,
        epochs=3,
        batch_size=4,
        save_every_n_epochs=1,
        keep_last_n_epochs=1,
        sample_prompts=("zkchar, red square", "zkchar, blue circle"),
        sample_steps=2,
    )
    output = tmp_path / "loras" / "e.safetensors"
    result = train_lora(config, examples, output, on_epoch=reports.append)
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert [r.step for r in reports] == [2, 4, 6]  # 2 buckets, so 2 batches per epoch
    assert reports[0].lora_path and not Path(reports[0].lora_path).exists()  # kept: last 1
    assert result.epoch_files == [reports[1].lora_path]
    assert read_kohya_lora(Path(reports[1].lora_path))[1]["ss_epoch"] == "2"
    assert reports[2].lora_path is None  # the last epoch is the result itself
    for report in reports:
        assert len(report.sample_paths) == 2
        assert all(Path(p).is_file() for p in report.sample_paths)


def test_cosine_schedule_warms_up_then_decays(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    progress: list[TrainingProgress] = []
    config = _config(tiny_sd, max_steps=6, lr_scheduler="cosine", lr_warmup_steps=2)
    result = train_lora(config, examples, tmp_path / "c.safetensors", progress.append)
    rates = [p.lr for p in progress]  # the rate for the next step, after each step
    assert rates[:2] == pytest.approx([5e-4, 1e-3])  # warm-up: 1/2, then the full rate
    assert rates[1] > rates[2] > rates[3] > rates[4] > rates[5] == pytest.approx(0.0)
    assert result.metadata["ss_lr_scheduler"] == "cosine"
    assert result.metadata["ss_lr_warmup_steps"] == "2"


def test_noise_offset_and_min_snr_change_the_training(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    plain = train_lora(_config(tiny_sd, max_steps=2), examples, tmp_path / "p.safetensors")
    tuned = train_lora(
        _config(tiny_sd, max_steps=2, noise_offset=0.1, min_snr_gamma=5.0),
        examples,
        tmp_path / "t.safetensors",
    )
    assert plain.losses != tuned.losses
    assert tuned.metadata["ss_noise_offset"] == "0.1"
    assert tuned.metadata["ss_min_snr_gamma"] == "5.0"


def test_out_of_memory_fails_with_advice(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(self: object, batch: object) -> float:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer_module._TrainingRun, "train_step", out_of_memory)
    output = tmp_path / "oom.safetensors"
    with pytest.raises(
        TrainingError, match=r"out of memory .*batch size 2.*gradient_checkpointing"
    ):
        train_lora(_config(tiny_sd, max_steps=2), examples, output)
    assert not output.exists()


def test_unknown_options_are_refused(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    bad = _config(tiny_sd, optimizer="sgd", lr_scheduler="step", keep_tokens=-1)
    with pytest.raises(TrainingError, match="optimizer must be.*lr_scheduler must be.*keep_tokens"):
        train_lora(bad, examples, tmp_path / "x.safetensors")
    with pytest.raises(TrainingError, match="adamw8bit needs bitsandbytes"):
        train_lora(_config(tiny_sd, optimizer="adamw8bit"), examples, tmp_path / "y.safetensors")
    with pytest.raises(TrainingError, match="unknown training settings: colour"):
        TrainingConfig.from_dict({"base_model": "x", "colour": "red"})
