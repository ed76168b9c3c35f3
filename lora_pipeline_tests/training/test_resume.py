"""Resume in process: a run stopped mid-epoch carries on with its step count, trains no step
twice, and gives bit for bit the LoRA of an uninterrupted run (CPU). The crash and cancel of the
training child process are in test_pipes.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lora_pipeline.training.trainer import (
    TrainingExample,
    TrainingInterrupted,
    TrainingResult,
    train_lora,
)
from lora_pipeline_tests.training.conftest import assert_same_lora, resume_config


def test_stopped_mid_epoch_resumes_to_the_same_lora(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path, uninterrupted: TrainingResult
) -> None:
    config = resume_config(tiny_sd, tmp_path / "state")
    output = tmp_path / "lora.safetensors"
    steps: list[int] = []
    with pytest.raises(TrainingInterrupted, match="stopped at step 3") as stopped:
        train_lora(
            config,
            examples,
            output,
            lambda p: steps.append(p.step),
            should_stop=lambda: len(steps) == 3,
        )
    assert stopped.value.state_path is not None and stopped.value.state_path.is_dir()
    assert not output.exists()
    resumed_steps: list[int] = []
    result = train_lora(config, examples, output, lambda p: resumed_steps.append(p.step))
    assert result.resumed_from_step == 3
    assert resumed_steps == [4, 5, 6]
    assert_same_lora(result, uninterrupted)
    assert not any((tmp_path / "state").iterdir()), "a finished run leaves no resume state"


def test_changed_settings_start_afresh(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    config = resume_config(tiny_sd, tmp_path / "state", epochs=1)
    with pytest.raises(TrainingInterrupted, match="stopped at step 1"):
        train_lora(config, examples, tmp_path / "a.safetensors", should_stop=lambda: True)
    other = train_lora(replace(config, seed=12), examples, tmp_path / "b.safetensors")
    assert other.resumed_from_step == 0 and other.history == [1, 2]
