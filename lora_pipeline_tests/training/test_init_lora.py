"""A run that starts from an earlier LoRA file (`init_lora`): the adapters hold the file's weights
before the first step, a file that does not fit the network is refused before any step, and a
saved state of the run still wins over the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_pipeline.training.kohya_format import read_kohya_lora, save_kohya_lora
from lora_pipeline.training.trainer import (
    TrainingConfig,
    TrainingError,
    TrainingExample,
    TrainingInterrupted,
    _TrainingRun,
    train_lora,
)
from lora_pipeline_tests.training.test_options import _config as options_config


def _config(tiny_sd: Path, **changes: object) -> TrainingConfig:
    # every kind of adapter: attention, text encoder and LoCon convolutions
    adapters = dict(max_steps=2, train_text_encoder=True, conv_rank=2, conv_alpha=1.0)
    return options_config(tiny_sd, **(adapters | changes))


@pytest.fixture(scope="module")
def init_file(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A trained LoRA (its lora_up weights are no longer peft's zeros)."""
    output = tmp_path_factory.mktemp("init") / "parent.safetensors"
    return train_lora(_config(tiny_sd, seed=1), examples, output).path


def _initialised(config: TrainingConfig, examples: list[TrainingExample]) -> _TrainingRun:
    """A run after its adapters were added (and init_lora loaded), before any step."""
    run = _TrainingRun(config, examples, Path("unused.safetensors"), None, None, None, None)
    run.load_models()
    run.add_adapters()
    return run


def test_the_adapters_start_with_the_files_weights(
    tiny_sd: Path, examples: list[TrainingExample], init_file: Path
) -> None:
    tensors, _ = read_kohya_lora(init_file)
    assert any(k.startswith("lora_te_") for k in tensors)
    assert any(t.ndim == 4 and t.shape[-1] == 3 for t in tensors.values()), "LoCon 3×3 convs"
    started = _initialised(_config(tiny_sd, init_lora=str(init_file)), examples).lora_tensors()
    assert started.keys() == tensors.keys()
    assert all(torch.equal(started[k], tensors[k]) for k in tensors)

    fresh = _initialised(_config(tiny_sd), examples).lora_tensors()
    up_keys = [k for k in tensors if k.endswith("lora_up.weight")]
    assert all(not fresh[k].any() for k in up_keys), "peft starts lora_up at zero"


def test_another_alpha_keeps_what_the_file_means(
    tiny_sd: Path, examples: list[TrainingExample], init_file: Path
) -> None:
    tensors, _ = read_kohya_lora(init_file)
    config = _config(tiny_sd, alpha=2.0, init_lora=str(init_file))
    started = _initialised(config, examples).lora_tensors()
    for key, tensor in tensors.items():
        module, part = key.split(".", 1)
        conv = tensors[f"{module}.lora_down.weight"].shape[-1:] == (3,)
        if part == "lora_up.weight" and not conv:
            # up @ down × alpha / rank stays the same: half the alpha, twice the up weight
            assert torch.equal(started[key], tensor * 2), key
        elif part == "alpha":
            assert float(started[key]) == (1.0 if conv else 2.0)
        else:
            assert torch.equal(started[key], tensor), key


def test_training_from_the_file_is_not_training_from_scratch(
    tiny_sd: Path, examples: list[TrainingExample], init_file: Path, tmp_path: Path
) -> None:
    config = _config(tiny_sd)
    scratch = train_lora(config, examples, tmp_path / "scratch.safetensors")
    lines: list[str] = []
    continued = train_lora(
        _config(tiny_sd, init_lora=str(init_file)),
        examples,
        tmp_path / "continued.safetensors",
        log=lines.append,
    )
    # the same seed and batches: only the starting weights differ, and the first loss shows it
    assert continued.losses[0] != scratch.losses[0]
    mine, theirs = read_kohya_lora(continued.path)[0], read_kohya_lora(scratch.path)[0]
    assert any(not torch.equal(mine[k], theirs[k]) for k in mine)
    assert "starting from the weights of parent.safetensors" in lines
    assert continued.config["init_lora"] == str(init_file)
    assert continued.metadata["lora_pipeline.init_lora"] == "parent.safetensors"
    parent_header = read_kohya_lora(init_file)[1]
    assert (
        continued.metadata["lora_pipeline.init_lora_model_hash"]
        == (parent_header["sshs_model_hash"])
    )
    assert "lora_pipeline.init_lora" not in scratch.metadata


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"rank": 2},
            r"another rank.*shape\(s\) differ \(e.g. \w+.lora_down.weight: \[4, \d+\] in the "
            r"file, \[2, \d+\] in the network",
        ),
        ({"train_text_encoder": False}, r"tensor\(s\) only in the file \(e.g. lora_te_"),
        ({"conv_rank": 0}, r"tensor\(s\) only in the file \(e.g. lora_unet_"),
    ],
)
def test_a_file_that_does_not_fit_the_network_is_refused_before_any_step(
    tiny_sd: Path,
    examples: list[TrainingExample],
    init_file: Path,
    tmp_path: Path,
    changes: dict,
    message: str,
) -> None:
    output = tmp_path / "out.safetensors"
    steps: list[object] = []
    config = _config(tiny_sd, init_lora=str(init_file), **changes)
    with pytest.raises(TrainingError, match="cannot start from init_lora .*parent.safetensors: "):
        train_lora(config, examples, output, steps.append)
    with pytest.raises(TrainingError, match=message):
        train_lora(config, examples, output, steps.append)
    assert steps == [] and not output.exists()


def test_another_base_model_and_a_missing_file_are_refused(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    alien = tmp_path / "sdxl.safetensors"
    name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    save_kohya_lora(
        alien,
        {
            f"{name}.lora_down.weight": torch.zeros(4, 640, dtype=torch.float16),
            f"{name}.lora_up.weight": torch.zeros(640, 4, dtype=torch.float16),
            f"{name}.alpha": torch.tensor(4.0, dtype=torch.float16),
        },
        {},
    )
    config = _config(tiny_sd, train_text_encoder=False, conv_rank=0)
    output = tmp_path / "out.safetensors"
    with pytest.raises(
        TrainingError, match=r"only in the file .*input_blocks.*only in the network"
    ):
        train_lora(
            TrainingConfig(**(config.to_dict() | {"init_lora": str(alien)})), examples, output
        )
    gone = tmp_path / "gone.safetensors"
    with pytest.raises(TrainingError, match="cannot start from init_lora .*LoRA file not found"):
        train_lora(
            TrainingConfig(**(config.to_dict() | {"init_lora": str(gone)})), examples, output
        )


def test_a_saved_state_wins_over_the_init_file(
    tiny_sd: Path, examples: list[TrainingExample], init_file: Path, tmp_path: Path
) -> None:
    config = _config(tiny_sd, init_lora=str(init_file), max_steps=3, state_dir=str(tmp_path / "s"))
    whole = train_lora(config, examples, tmp_path / "whole.safetensors")
    steps: list[int] = []
    with pytest.raises(TrainingInterrupted, match="stopped at step 1"):
        train_lora(
            config,
            examples,
            tmp_path / "split.safetensors",
            lambda p: steps.append(p.step),
            should_stop=lambda: bool(steps),
        )
    lines: list[str] = []
    resumed = train_lora(config, examples, tmp_path / "split.safetensors", log=lines.append)
    # the state's weights (one step past the file's) were used, not the file's again
    assert resumed.resumed_from_step == 1 and resumed.history == [1, 2, 3]
    assert resumed.losses == whole.losses
    mine, expected = read_kohya_lora(resumed.path)[0], read_kohya_lora(whole.path)[0]
    assert all(torch.equal(mine[k], expected[k]) for k in expected)
    assert any(line.startswith("resuming from step 1") for line in lines)
