"""Single-file checkpoints offline: the shipped SD1.5/SDXL configs plus a tokenizer folder make a
config folder diffusers' from_single_file reads without the hub; a tiny SD written in the
original single-file layout loads to exactly the weights of its diffusers folder, and trains."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from lora_pipeline.generation.local import load_pipeline
from lora_pipeline.model_configs import (
    ModelConfigError,
    build_config_folder,
    config_folder_for,
    shipped_config,
)
from lora_pipeline.training.trainer import (
    TrainingConfig,
    TrainingError,
    TrainingExample,
    train_lora,
)
from lora_pipeline_tests.training.single_file import write_single_file


@pytest.fixture(scope="module")
def single_file(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_single_file(tiny_sd, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def test_shipped_configs_describe_sd15_and_sdxl(tiny_sd: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTokenizer

    folder = build_config_folder(shipped_config("sd15"), tiny_sd / "tokenizer", tmp_path / "sd15")
    unet = UNet2DConditionModel.load_config(folder / "unet")
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["sample_size"] == 64
    assert AutoencoderKL.load_config(folder / "vae")["latent_channels"] == 4
    assert CLIPTextConfig.from_pretrained(folder / "text_encoder").hidden_size == 768
    assert PNDMScheduler.from_pretrained(folder / "scheduler").config.beta_end == 0.012
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    assert tokenizer.model_max_length == 77

    xl = build_config_folder(shipped_config("sdxl"), tiny_sd / "tokenizer", tmp_path / "sdxl")
    assert CLIPTextConfig.from_pretrained(xl / "text_encoder_2").hidden_size == 1280
    assert UNet2DConditionModel.load_config(xl / "unet")["addition_embed_type"] == "text_time"
    assert CLIPTokenizer.from_pretrained(xl / "tokenizer_2").pad_token == "!"
    assert sorted(p.name for p in xl.iterdir()) == [
        "model_index.json",
        "scheduler",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "unet",
        "vae",
    ]


def test_config_folder_is_chosen_by_checkpoint_and_cached(
    single_file: Path, tiny_sd: Path, tmp_path: Path
) -> None:
    folder = config_folder_for(single_file, tiny_sd / "tokenizer", tmp_path / "cache")
    assert folder.name.startswith("sd15-")
    assert (folder / "tokenizer" / "vocab.json").is_file()
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    assert config_folder_for(single_file, tiny_sd / "tokenizer", tmp_path / "cache") == folder
    assert (folder / "model_index.json").stat().st_mtime_ns == stamp
    with pytest.raises(ModelConfigError, match="not a CLIP tokenizer folder .*vocab.json"):
        config_folder_for(single_file, tmp_path, tmp_path / "cache")


def test_a_single_file_checkpoint_loads_offline_to_the_same_weights(
    single_file: Path, tiny_sd: Path, tmp_path: Path
) -> None:
    # The tiny model's own configs stand in for the shipped SD1.5 ones (same mechanism).
    template = tmp_path / "template"
    shutil.copytree(tiny_sd, template, ignore=shutil.ignore_patterns("*.safetensors"))
    config = build_config_folder(template, tiny_sd / "tokenizer", tmp_path / "config")
    from_file = load_pipeline(single_file, torch.float32, config=config)
    from_folder = load_pipeline(tiny_sd, torch.float32)
    for part in ("unet", "vae", "text_encoder"):
        expected = getattr(from_folder, part).state_dict()
        loaded = getattr(from_file, part).state_dict()
        assert loaded.keys() == expected.keys(), part
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), part


def test_training_from_a_single_file(
    single_file: Path, tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    template = tmp_path / "template"
    shutil.copytree(tiny_sd, template, ignore=shutil.ignore_patterns("*.safetensors"))
    config = build_config_folder(template, tiny_sd / "tokenizer", tmp_path / "config")
    settings = dict(base_model=str(single_file), max_steps=1, rank=4, alpha=4.0, device="cpu")
    result = train_lora(
        TrainingConfig(**settings, single_file_config=str(config)),  # type: ignore[arg-type]
        examples,
        tmp_path / "lora.safetensors",
    )
    assert result.metadata["ss_sd_model_name"] == "tiny.safetensors"
    digest = hashlib.sha256(single_file.read_bytes()).hexdigest()
    assert result.metadata["lora_pipeline.base_model_hash"] == digest

    with pytest.raises(TrainingError, match="LORA_PIPELINE_TOKENIZER_DIR"):
        train_lora(TrainingConfig(**settings), examples, tmp_path / "no.safetensors")  # type: ignore[arg-type]


def test_the_models_resource_gives_the_trainer_its_config_folder_and_kohya(
    single_file: Path, tiny_sd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lora_pipeline.defs.resources import ModelsResource
    from lora_pipeline.model_runtime import ModelRuntime

    monkeypatch.setenv("LORA_PIPELINE_HOME", str(tmp_path / "home"))
    for name in ("TOKENIZER_DIR", "KOHYA_SCRIPTS_DIR", "KOHYA_PYTHON"):
        monkeypatch.delenv(f"LORA_PIPELINE_{name}", raising=False)
    tokenizer = str(tiny_sd / "tokenizer")

    def runtime(base_model: Path, **fields: str) -> ModelRuntime:
        return ModelsResource(base_model=str(base_model), **fields).runtime()

    config = Path(runtime(single_file, tokenizer_dir=tokenizer).single_file_config())
    assert config.parent == tmp_path / "home" / "model_configs" and config.name.startswith("sd15-")
    assert runtime(tiny_sd, tokenizer_dir=tokenizer).single_file_config() is None
    assert runtime(single_file).single_file_config() is None

    assert runtime(tiny_sd).kohya_setup() is None
    scripts = tmp_path / "sd-scripts"
    (scripts / "venv" / "bin").mkdir(parents=True)
    (scripts / "venv" / "bin" / "python").write_text("")
    monkeypatch.setenv("LORA_PIPELINE_KOHYA_SCRIPTS_DIR", str(scripts))
    setup = runtime(tiny_sd, tokenizer_dir=tokenizer).kohya_setup()
    assert setup is not None and setup.scripts_dir == scripts
    assert setup.python == str(scripts / "venv" / "bin" / "python")
    assert setup.tokenizer_dir == Path(tokenizer)
