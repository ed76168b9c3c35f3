"""Every common single-file layout loads, offline, through the one loader that generation, the
eval grid and the built-in trainer share (`generation.local.load_pipeline`): the text encoder
with and without `text_model.`, fp16/bf16/fp32, EMA-only (pruned) files and full files with
`model_ema.*`, `.ckpt` pickles, and SDXL (`conditioner.embedders.0/1`); a file that cannot be
loaded is refused in one line naming the problem. The tiny SD and the tiny SDXL are written in
these layouts (random weights, built offline)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_pipeline.generation.local import (
    DiffusersGenerator,
    GenerationError,
    GenerationRequest,
    load_pipeline,
)
from lora_pipeline.generation.single_file import CheckpointError, checkpoint_layout
from lora_pipeline.model_configs import build_config_folder
from lora_pipeline.training.defaults import detect_base_model_version
from lora_pipeline.training.kohya_format import read_kohya_lora
from lora_pipeline.training.trainer import TrainingConfig, TrainingExample, train_lora
from lora_pipeline_tests.training.single_file import (
    SDXL_OPEN_CLIP,
    write_sdxl_single_file,
    write_single_file,
)
from lora_pipeline_tests.training.tiny_sdxl import build_tiny_sdxl

CLIP = "cond_stage_model.transformer."
# Buffers of the original LatentDiffusion that full and EMA-only files carry.
LDM_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod")


def _without_text_model(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace(CLIP + "text_model.", CLIP): v for k, v in state.items()}


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _ema_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # v1-5-pruned-emaonly: the EMA weights stored as the model's, fp16, plus LDM buffers and
    # the text encoder's position_ids.
    extra = {name: torch.linspace(0.001, 0.01, 1000) for name in LDM_BUFFERS}
    extra[CLIP + "text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    return {**_cast(state, torch.float16), **extra}


def _with_ema(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # A full training file: the model's weights and, beside them, EMA weights under kohya's
    # flattened names (which must not be the ones loaded: ComfyUI and kohya use the model's).
    ema = {
        "model_ema." + "".join(k.split(".")[1:]): torch.zeros_like(v)
        for k, v in state.items()
        if k.startswith("model.diffusion_model.")
    }
    extra = {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(7)}
    return {**state, **ema, **extra, **{name: torch.ones(1000) for name in LDM_BUFFERS}}


LAYOUTS = {
    "standard-fp32": lambda s: s,
    "no-text-model": _without_text_model,
    "fp16": lambda s: _cast(s, torch.float16),
    "bf16": lambda s: _cast(s, torch.bfloat16),
    "no-text-model-fp16": lambda s: _cast(_without_text_model(s), torch.float16),
    "ema-only-pruned": _ema_only,
    "full-with-ema": _with_ema,
}
STORED_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(scope="module")
def layouts(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("layouts")
    state = load_file(write_single_file(tiny_sd, folder / "base.safetensors"))
    files = {}
    for name, transform in LAYOUTS.items():
        files[name] = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in transform(dict(state)).items()}, files[name])
    files["ckpt"] = folder / "pickled.ckpt"
    torch.save({"state_dict": _without_text_model(state), "global_step": 5}, files["ckpt"])
    return files


@pytest.fixture(scope="module")
def config_folder(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The tiny model's configs stand in for the shipped SD1.5 ones (same mechanism).
    work = tmp_path_factory.mktemp("layout-config")
    shutil.copytree(tiny_sd, work / "template", ignore=shutil.ignore_patterns("*.safetensors"))
    return build_config_folder(work / "template", tiny_sd / "tokenizer", work / "config")


@pytest.fixture(scope="module")
def reference(tiny_sd: Path):  # noqa: ANN201 - a diffusers pipeline
    return load_pipeline(tiny_sd, torch.float32)


@pytest.mark.parametrize("layout", [*LAYOUTS, "ckpt"])
def test_every_layout_loads_to_the_weights_of_the_diffusers_folder(
    layout: str, layouts: dict[str, Path], config_folder: Path, reference
) -> None:  # noqa: ANN001
    pipe = load_pipeline(layouts[layout], torch.float32, config=config_folder)
    stored = next((d for name, d in STORED_DTYPE.items() if name in layout), torch.float32)
    if layout == "ema-only-pruned":
        stored = torch.float16
    for part in ("unet", "vae", "text_encoder"):
        expected = getattr(reference, part).state_dict()
        loaded = getattr(pipe, part).state_dict()
        assert loaded.keys() == expected.keys(), (layout, part)
        for key, tensor in expected.items():
            want = tensor.to(stored).to(torch.float32) if tensor.is_floating_point() else tensor
            assert loaded[key].dtype == tensor.dtype, (layout, part, key)
            assert torch.equal(loaded[key], want), (layout, part, key)


def test_a_layout_loads_in_the_dtype_asked_for(
    layouts: dict[str, Path], config_folder: Path
) -> None:
    pipe = load_pipeline(layouts["no-text-model"], torch.bfloat16, config=config_folder)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.bfloat16}


def test_the_layout_is_read_from_the_header(layouts: dict[str, Path]) -> None:
    standard = checkpoint_layout(layouts["standard-fp32"])
    assert (standard.version, standard.clip_without_text_model, standard.dtype) == (
        "sd15",
        False,
        "fp32",
    )
    assert checkpoint_layout(layouts["no-text-model-fp16"]).clip_without_text_model
    assert checkpoint_layout(layouts["bf16"]).dtype == "bf16"
    assert checkpoint_layout(layouts["full-with-ema"]).has_ema
    assert checkpoint_layout(layouts["ckpt"]).clip_without_text_model
    assert detect_base_model_version(str(layouts["no-text-model"])) == "sd15"


def test_an_sdxl_file_is_told_apart_with_or_without_text_model(tmp_path: Path) -> None:
    common = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(1),
        "conditioner.embedders.1.model.positional_embedding": torch.zeros(1),
    }
    for segment, missing in (("text_model.", False), ("", True)):
        path = tmp_path / f"xl{segment}.safetensors"
        clip = f"conditioner.embedders.0.transformer.{segment}embeddings.token_embedding.weight"
        save_file({**common, clip: torch.zeros(1)}, path)
        layout = checkpoint_layout(path)
        assert (layout.version, layout.clip_without_text_model) == ("sdxl", missing)
        assert detect_base_model_version(str(path)) == "sdxl"


def test_an_sdxl_file_missing_an_encoder_or_a_refiner_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    common = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(1),
    }
    clip_l = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
    cases = {
        # Before: taken for SD1.5 and refused for lacking cond_stage_model.transformer.*
        "no-bigg": ({clip_l: torch.zeros(1)}, "without its second text encoder"),
        "refiner": (
            {"conditioner.embedders.0.model.positional_embedding": torch.zeros(1)},
            "is an SDXL refiner",
        ),
    }
    for name, (encoders, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file({**common, **encoders}, path)
        with pytest.raises(CheckpointError, match=message) as refused:
            checkpoint_layout(path)
        assert "\n" not in str(refused.value) and str(path) in str(refused.value)
        # Choosing the training defaults still sees SDXL; loading it gives the error above.
        assert detect_base_model_version(str(path)) == "sdxl"


def _generation_error(path: Path, config: Path | None) -> str:
    with pytest.raises(GenerationError) as refused:
        load_pipeline(path, torch.float32, config=config)
    message = str(refused.value)
    assert "\n" not in message, message
    return message


def test_a_file_that_cannot_be_loaded_is_refused_in_one_line(
    layouts: dict[str, Path], config_folder: Path, tmp_path: Path
) -> None:
    state = load_file(layouts["standard-fp32"])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    assert "is not a readable safetensors file" in _generation_error(garbage, config_folder)

    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1)}, lora)
    assert "has no UNet weights (model.diffusion_model.*)" in _generation_error(lora, None)

    flat_ema = tmp_path / "flat-ema.safetensors"
    save_file({k: v for k, v in _with_ema(state).items() if "diffusion_model." not in k}, flat_ema)
    assert "only kohya-flattened EMA weights" in _generation_error(flat_ema, config_folder)

    no_vae = tmp_path / "no-vae.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("first_stage_model.")}, no_vae)
    assert "has no VAE weights" in _generation_error(no_vae, config_folder)

    sd2 = tmp_path / "sd2.safetensors"
    save_file({**state, "cond_stage_model.model.positional_embedding": torch.zeros(1)}, sd2)
    assert "Stable Diffusion 2.x" in _generation_error(sd2, config_folder)

    # the layout diffusers cannot read alone, with no config folder to build its encoder from
    message = _generation_error(layouts["no-text-model"], None)
    assert "no text_model. segment" in message and "LORA_PIPELINE_TOKENIZER_DIR" in message

    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(layouts["fp16"].read_bytes()[:4096])
    assert str(torn) in _generation_error(torn, config_folder)

    # Weights missing from a readable file: diffusers would leave them on the meta device.
    no_layer = tmp_path / "text-encoder-without-a-layer.safetensors"
    save_file({k: v for k, v in state.items() if not _in_layer_1_of_clip(k)}, no_layer)
    message = _generation_error(no_layer, config_folder)
    assert "is incomplete" in message and "weights of its text_encoder are missing" in message
    no_out = tmp_path / "unet-without-its-output.safetensors"
    save_file({k: v for k, v in state.items() if k != "model.diffusion_model.out.2.weight"}, no_out)
    assert "is incomplete" in _generation_error(no_out, config_folder)


def _in_layer_1_of_clip(key: str) -> bool:
    return key.startswith("cond_stage_model.") and ".layers.1." in key


def test_generation_and_training_use_the_layout_diffusers_rejected(
    layouts: dict[str, Path],
    config_folder: Path,
    examples: list[TrainingExample],
    tmp_path: Path,
) -> None:
    path = layouts["no-text-model-fp16"]
    generator = DiffusersGenerator(str(path), "cpu", config=config_folder)
    image = generator.generate(GenerationRequest("zkchar", steps=2, width=64, height=64))
    assert image.size == (64, 64)
    config = TrainingConfig(
        base_model=str(path), max_steps=1, rank=4, alpha=4.0, device="cpu", resolution=64,
        single_file_config=str(config_folder),
    )  # fmt: skip
    result = train_lora(config, examples, tmp_path / "lora.safetensors")
    assert result.steps == 1 and result.metadata["ss_sd_model_name"] == path.name


def test_the_runtime_gives_local_generation_the_config_folder(
    layouts: dict[str, Path], tiny_sd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generation and the eval grid load a single file offline as training does."""
    from lora_pipeline.defs.resources import ModelsResource

    monkeypatch.setenv("LORA_PIPELINE_HOME", str(tmp_path / "home"))
    resource = ModelsResource(
        base_model=str(layouts["no-text-model"]), tokenizer_dir=str(tiny_sd / "tokenizer")
    )
    runtime = resource.runtime()
    generator = runtime.generator()
    assert generator.config == runtime.single_file_config() is not None


def test_sdxls_first_encoder_without_text_model_is_built_exactly(
    tiny_sd: Path, tmp_path: Path
) -> None:
    """SDXL keeps CLIP-L under conditioner.embedders.0.transformer.: the encoder the loader
    builds for that layout without `text_model.` has exactly the file's weights."""
    from transformers import CLIPTextModel

    from lora_pipeline.generation.single_file import clip_text_encoder

    encoder = CLIPTextModel.from_pretrained(tiny_sd / "text_encoder")
    prefix = "conditioner.embedders.0.transformer."
    state = {prefix + k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
    path = tmp_path / "xl-clip.safetensors"
    save_file({k: v.half().contiguous() for k, v in state.items()}, path)
    built = clip_text_encoder(path, prefix, tiny_sd / "text_encoder", torch.float32)
    for key, tensor in encoder.state_dict().items():
        assert torch.equal(built.state_dict()[key], tensor.half().float()), key


class SdxlFile(NamedTuple):
    folder: Path  # the tiny SDXL in diffusers layout, whose weights the file holds
    checkpoint: Path  # the same weights as one sgm-layout single file
    config: Path  # the config folder that loads it offline


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory: pytest.TempPathFactory) -> SdxlFile:
    work = tmp_path_factory.mktemp("sdxl-single-file")
    folder = build_tiny_sdxl(work / "tiny-sdxl")
    checkpoint = write_sdxl_single_file(folder, work / "tiny-sdxl.safetensors")
    # The tiny model's configs stand in for the shipped SDXL ones, as for SD1.5 above.
    shutil.copytree(folder, work / "template", ignore=shutil.ignore_patterns("*.safetensors"))
    config = build_config_folder(work / "template", folder / "tokenizer", work / "config")
    return SdxlFile(folder, checkpoint, config)


def test_an_sdxl_single_file_loads_both_text_encoders_exactly(sdxl_file: SdxlFile) -> None:
    """diffusers tells SDXL's two encoders apart by width; each must get its own weights (with
    encoders of one width the second would be filled from CLIP-L's keys)."""
    from diffusers import StableDiffusionXLPipeline

    assert checkpoint_layout(sdxl_file.checkpoint).version == "sdxl"
    pipe = load_pipeline(sdxl_file.checkpoint, torch.float32, config=sdxl_file.config)
    assert isinstance(pipe, StableDiffusionXLPipeline)
    reference = StableDiffusionXLPipeline.from_pretrained(sdxl_file.folder, local_files_only=True)
    assert reference.text_encoder.config.hidden_size != reference.text_encoder_2.config.hidden_size
    for part in ("text_encoder", "text_encoder_2", "unet", "vae"):
        expected = getattr(reference, part).state_dict()
        loaded = getattr(pipe, part).state_dict()
        assert loaded.keys() == expected.keys(), part
        for key, tensor in expected.items():
            assert torch.equal(loaded[key], tensor), (part, key)
    assert pipe.tokenizer_2.pad_token == "!"  # SDXL's second tokenizer, not a copy of the first


def test_an_sdxl_single_file_generates_a_64_px_image(sdxl_file: SdxlFile) -> None:
    generator = DiffusersGenerator(str(sdxl_file.checkpoint), "cpu", config=sdxl_file.config)
    with generator:
        image = generator.generate(GenerationRequest("zkchar", steps=2, width=64, height=64))
    assert image.size == (64, 64)


@pytest.mark.parametrize(
    "dropped", ["transformer.resblocks.1.attn.in_proj_weight", "text_projection"]
)
def test_an_sdxl_file_with_a_torn_second_encoder_is_refused_in_one_line(
    sdxl_file: SdxlFile, dropped: str, tmp_path: Path
) -> None:
    state = load_file(sdxl_file.checkpoint)
    del state[SDXL_OPEN_CLIP + dropped]
    torn = tmp_path / "torn-second-encoder.safetensors"
    save_file(state, torn)
    message = _generation_error(torn, sdxl_file.config)
    assert str(torn) in message and "is incomplete" in message, message
    assert "weights of its text_encoder_2 are missing" in message, message


def test_an_sdxl_single_file_trains_both_text_encoders(
    sdxl_file: SdxlFile, examples: list[TrainingExample], tmp_path: Path
) -> None:
    """The trainer loads the SDXL single file through the same loader as generation."""
    config = TrainingConfig(
        base_model=str(sdxl_file.checkpoint), max_steps=1, rank=4, alpha=4.0, device="cpu",
        train_text_encoder=True, single_file_config=str(sdxl_file.config),
    )  # fmt: skip
    result = train_lora(config, examples, tmp_path / "xl.safetensors")
    tensors, metadata = read_kohya_lora(result.path)
    assert result.steps == 1 and metadata["ss_sd_model_name"] == sdxl_file.checkpoint.name
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert any(key.startswith("lora_te2_") for key in tensors)
