from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_pipeline.generation.local import DiffusersGenerator, GenerationRequest, LoraSpec
from lora_pipeline.training.data import batches_per_epoch, place_examples
from lora_pipeline.training.kohya_format import UNET_TARGET_MODULES, read_kohya_lora
from lora_pipeline.training.trainer import (
    TrainingConfig,
    TrainingError,
    TrainingExample,
    TrainingProgress,
    TrainingResult,
    train_lora,
)
from lora_pipeline_tests.generation.tiny_assets import DATA
from lora_pipeline_tests.training.conftest import TRAINED_STEPS

Trained = tuple[TrainingResult, list[TrainingProgress]]


def tiny_unet_target_modules(tiny_sd: Path) -> set[str]:
    """The kohya names of every module of the tiny UNet that the adapter targets."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
    return {
        "lora_unet_" + name.replace(".", "_")
        for name, _ in unet.named_modules()
        if any(name == t or name.endswith("." + t) for t in UNET_TARGET_MODULES)
    }


def test_training_runs_the_steps_with_finite_loss(
    trained: Trained, examples: list[TrainingExample]
) -> None:
    result, progress = trained
    assert result.steps == TRAINED_STEPS
    # 4 images of 3 aspect ratios at batch 2: batches never mix buckets
    per_epoch = batches_per_epoch(place_examples(examples, 64, enable_bucket=True), 2)
    assert per_epoch == 3
    assert result.epochs == math.ceil(TRAINED_STEPS / per_epoch)
    assert result.history == list(range(1, TRAINED_STEPS + 1))
    assert result.config["rank"] == 4 and result.config["resolution"] == 64
    assert len(result.losses) == TRAINED_STEPS
    assert all(math.isfinite(loss) for loss in result.losses)
    assert result.final_loss == result.losses[-1]
    assert [p.step for p in progress] == list(range(1, TRAINED_STEPS + 1))
    assert all(p.total_steps == TRAINED_STEPS and p.it_per_s > 0 for p in progress)
    assert progress[-1].eta_s == 0
    assert progress[-1].epoch == result.epochs
    assert result.seconds > 0


def test_the_file_is_a_kohya_lora_of_every_target_module(trained: Trained, tiny_sd: Path) -> None:
    result, _ = trained
    assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
    tensors, metadata = read_kohya_lora(result.path)
    modules = {key.split(".", 1)[0] for key in tensors}
    assert modules == tiny_unet_target_modules(tiny_sd)
    for module in modules:
        down = tensors[f"{module}.lora_down.weight"]
        up = tensors[f"{module}.lora_up.weight"]
        alpha = tensors[f"{module}.alpha"]
        assert down.shape[0] == 4 and up.shape[1] == 4, module
        assert alpha.shape == () and float(alpha) == 4.0
        assert down.dtype == up.dtype == torch.float16
    assert len(tensors) == 3 * len(modules)
    # peft starts lora_up at zero: training must have moved it
    assert max(float(tensors[f"{m}.lora_up.weight"].abs().max()) for m in modules) > 0


def test_the_metadata_is_kohyas_and_ours(trained: Trained, tiny_sd: Path) -> None:
    result, _ = trained
    _, metadata = read_kohya_lora(result.path)
    example = json.loads((DATA / "kohya_sd15_lora_metadata_example.json").read_text("utf-8"))
    assert set(example) <= set(metadata)
    assert all(isinstance(value, str) for value in metadata.values())
    assert metadata == {
        **result.metadata,
        **{k: metadata[k] for k in ("sshs_model_hash", "sshs_legacy_hash")},
    }
    unet_file = tiny_sd / "unet" / "diffusion_pytorch_model.safetensors"
    base_hash = hashlib.sha256(unet_file.read_bytes()).hexdigest()
    assert metadata["lora_pipeline.base_model_hash"] == base_hash
    assert metadata["ss_new_sd_model_hash"] == base_hash
    assert metadata["lora_pipeline.dataset_hash"] == "d" * 64
    assert metadata["ss_steps"] == str(TRAINED_STEPS)
    assert metadata["ss_sd_model_name"] == tiny_sd.name
    assert metadata["ss_learning_rate"] == "0.001"
    assert metadata["ss_num_train_images"] == "4"
    assert metadata["modelspec.title"] == "zkchar-test"
    assert metadata["modelspec.resolution"] == "64x64"
    assert metadata["modelspec.prediction_type"] == "epsilon"
    assert json.loads(metadata["ss_tag_frequency"]) == {
        "1_zkchar": {"zkchar": 4, "red square": 2, "blue circle": 1, "green bar": 1}
    }
    assert float(metadata["ss_training_finished_at"]) >= float(metadata["ss_training_started_at"])


def test_diffusers_loads_every_weight_of_the_file(trained: Trained, tiny_sd: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    result, _ = trained
    tensors, _ = read_kohya_lora(result.path)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True)
    pipe.load_lora_weights(str(result.path), adapter_name="trained")
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name="trained")
    assert len(loaded) == 2 * len(tensors) // 3
    for key, value in loaded.items():
        module, part = key.rsplit(".lora_", 1)
        kohya_part = "lora_down.weight" if part.startswith("A") else "lora_up.weight"
        kohya_key = "lora_unet_" + module.replace(".", "_") + "." + kohya_part
        assert torch.equal(value.to(torch.float16), tensors[kohya_key]), key


def test_the_trained_lora_changes_generated_images(trained: Trained, tiny_sd: Path) -> None:
    result, _ = trained
    generator = DiffusersGenerator(str(tiny_sd), device="cpu")
    request = GenerationRequest("zkchar, red square", seed=1, steps=4, width=64, height=64)
    base = np.asarray(generator.generate(request, LoraSpec(result.path, 0.0)), dtype=np.float32)
    full = np.asarray(generator.generate(request, LoraSpec(result.path, 1.0)), dtype=np.float32)
    generator.close()
    effect = np.abs(base - full).mean() / 255
    assert effect > 0.002


def _short_config(base_model: Path, **changes: object) -> TrainingConfig:
    settings = dict(base_model=str(base_model), max_steps=2, resolution=32, seed=3, device="cpu")
    return TrainingConfig(**(settings | changes))  # type: ignore[arg-type]


def test_same_seed_same_lora_other_seed_other_lora(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    rng_state = torch.get_rng_state()
    first = train_lora(_short_config(tiny_sd), examples, tmp_path / "a.safetensors")
    assert torch.equal(torch.get_rng_state(), rng_state), "training changed the global RNG"
    again = train_lora(_short_config(tiny_sd), examples, tmp_path / "b.safetensors")
    other = train_lora(_short_config(tiny_sd, seed=4), examples, tmp_path / "c.safetensors")
    first_tensors = read_kohya_lora(first.path)[0]
    assert first.losses == again.losses
    assert all(torch.equal(t, read_kohya_lora(again.path)[0][k]) for k, t in first_tensors.items())
    assert first.losses != other.losses
    # epochs: 2 steps over 4 images at batch 1 is half an epoch, reported as 1
    assert (first.steps, first.epochs) == (2, 1)


def test_v_prediction_models_train_on_velocity(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    model = shutil.copytree(tiny_sd, tmp_path / "tiny-sd-v")
    config_file = model / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text("utf-8"))
    config_file.write_text(json.dumps(config | {"prediction_type": "v_prediction"}), "utf-8")
    result = train_lora(_short_config(model), examples, tmp_path / "v.safetensors")
    assert result.metadata["modelspec.prediction_type"] == "v_prediction"
    epsilon = train_lora(_short_config(tiny_sd), examples, tmp_path / "e.safetensors")
    assert result.losses != epsilon.losses


def test_epochs_without_max_steps(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    config = _short_config(
        tiny_sd, max_steps=None, epochs=2, batch_size=3, gradient_checkpointing=True
    )
    result = train_lora(config, examples, tmp_path / "e.safetensors")
    # at 32 px one image has a square bucket and three a 40×24 one: 2 batches of ≤ 3 per epoch
    assert batches_per_epoch(place_examples(examples, 32, enable_bucket=True), 3) == 2
    assert (result.steps, result.epochs) == (4, 2)


def test_bad_input_is_refused_before_anything_is_written(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    output = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match="no training examples"):
        train_lora(_short_config(tiny_sd), [], output)
    missing = [TrainingExample(tmp_path / "gone.png", "x")]
    with pytest.raises(TrainingError, match="1 image\\(s\\) not found"):
        train_lora(_short_config(tiny_sd), missing, output)
    with pytest.raises(TrainingError, match="fp16 mixed precision needs a CUDA device"):
        train_lora(_short_config(tiny_sd, mixed_precision="fp16"), examples, output)
    with pytest.raises(TrainingError, match="rank must be at least 1.*multiple of 8"):
        train_lora(_short_config(tiny_sd, rank=0, resolution=30), examples, output)
    with pytest.raises(TrainingError, match="model not found"):
        train_lora(_short_config(tmp_path / "none.safetensors"), examples, output)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(TrainingError, match="cannot read training image .*notes.png"):
        train_lora(_short_config(tiny_sd), [TrainingExample(not_an_image, "x")], output)
    assert not output.exists()


def test_a_diverging_run_stops_with_a_clear_error(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    output = tmp_path / "out.safetensors"
    with pytest.raises(TrainingError, match="loss became (nan|inf).*lower the learning rate"):
        train_lora(_short_config(tiny_sd, learning_rate=1e30, max_steps=6), examples, output)
    assert not output.exists()
