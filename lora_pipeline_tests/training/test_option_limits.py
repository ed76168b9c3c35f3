"""The training options' limits, one rule at a time: a value past it is refused with one short
sentence, a value on it is accepted, and an unset value is left to the smart defaults."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from lora_pipeline.errors import PipelineError, user_message
from lora_pipeline.training.errors import TrainingError
from lora_pipeline.training.options import (
    RunOptions,
    TrainingConfig,
    check_config,
    option_problems,
)

# (option, a refused value, the sentence that refuses it, an accepted value on the limit)
LIMITS = [
    ("rank", 0, "rank must be at least 1 (got 0)", 1),
    ("alpha", 0.0, "alpha must be positive (got 0.0)", 0.5),
    ("learning_rate", -1e-4, "learning_rate must be positive (got -0.0001)", 1e-6),
    ("epochs", 0, "epochs must be at least 1 (got 0)", 1),
    ("batch_size", 0, "batch_size must be at least 1 (got 0)", 1),
    ("resolution", 30, "resolution must be a multiple of 8 (got 30)", 8),
    ("max_steps", 0, "max_steps must be at least 1 (got 0)", 1),
    (
        "mixed_precision",
        "fp8",
        "mixed_precision must be one of auto, no, fp16, bf16 (got 'fp8')",
        "bf16",
    ),
    ("text_encoder_lr", 0.0, "text_encoder_lr must be positive (got 0.0)", 1e-6),
    ("conv_rank", -1, "conv_rank must not be negative (got -1)", 0),
    ("optimizer", "sgd", "optimizer must be one of adamw, adamw8bit (got 'sgd')", "adamw8bit"),
    ("lr_scheduler", "step", "lr_scheduler must be one of constant, cosine (got 'step')", "cosine"),
    ("lr_warmup_steps", -1, "lr_warmup_steps must not be negative (got -1)", 0),
    ("keep_tokens", -1, "keep_tokens must not be negative (got -1)", 0),
    ("noise_offset", -0.1, "noise_offset must not be negative (got -0.1)", 0.0),
    ("min_snr_gamma", 0.0, "min_snr_gamma must be positive (got 0.0)", 0.1),
    ("save_every_n_epochs", 0, "save_every_n_epochs must be at least 1 (got 0)", 1),
    ("keep_last_n_epochs", 0, "keep_last_n_epochs must be at least 1 (got 0)", 1),
    ("sample_steps", 0, "sample_steps must be at least 1 (got 0)", 1),
]
RUN_LIMITS = [
    ("backend", "colab", "backend must be one of auto, builtin, kohya (got 'colab')", "kohya"),
    ("scope", "global", "scope must be one of project, baseline (got 'global')", "baseline"),
]


def _config(**changes: object) -> TrainingConfig:
    return replace(TrainingConfig(base_model="tiny"), **changes)


def _ruled(cls: type) -> set[str]:
    return {f.name for f in fields(cls) if f.metadata["rule"] is not None}


def test_every_declared_limit_has_a_case_here() -> None:
    # A new limit in options.py gets its refused and accepted values in LIMITS.
    assert _ruled(TrainingConfig) == {name for name, *_ in LIMITS}
    assert _ruled(RunOptions) == {name for name, *_ in RUN_LIMITS}


@pytest.mark.parametrize(("name", "bad", "message", "good"), LIMITS, ids=[c[0] for c in LIMITS])
def test_a_training_option_past_its_limit_is_refused(
    name: str, bad: object, message: str, good: object
) -> None:
    assert option_problems(_config(**{name: bad}), "cpu") == [message]
    assert option_problems(_config(**{name: good}), "cpu") == []


@pytest.mark.parametrize(
    ("name", "bad", "message", "good"), RUN_LIMITS, ids=[c[0] for c in RUN_LIMITS]
)
def test_a_run_option_past_its_limit_is_refused(
    name: str, bad: object, message: str, good: object
) -> None:
    assert option_problems(RunOptions(**{name: bad})) == [message]
    assert option_problems(RunOptions(**{name: good})) == []


def test_unset_options_are_left_to_the_smart_defaults() -> None:
    assert option_problems(TrainingConfig(base_model="tiny"), "cpu") == []
    assert option_problems(RunOptions()) == []


def test_fp16_needs_a_cuda_device() -> None:
    config = _config(mixed_precision="fp16")
    assert option_problems(config, "cuda:0") == []
    assert option_problems(config, "cpu") == [
        "fp16 mixed precision needs a CUDA device; use 'no' or 'bf16'"
    ]
    assert option_problems(config) == []  # no device given: nothing to say about it


def test_a_config_with_problems_is_refused_in_one_line_naming_each() -> None:
    config = _config(learning_rate=-1.0, rank=0)
    with pytest.raises(TrainingError) as caught:
        check_config(config, "cpu")
    message = user_message(caught.value)
    assert message == (
        "cannot train: rank must be at least 1 (got 0); learning_rate must be positive (got -1.0)"
    )
    # Callers that caught ValueError before the common base keep working.
    assert isinstance(caught.value, PipelineError) and isinstance(caught.value, ValueError)


def test_unknown_settings_are_refused_when_a_job_is_read() -> None:
    with pytest.raises(TrainingError, match="unknown training settings: colour, size"):
        TrainingConfig.from_dict({"base_model": "x", "colour": "red", "size": 3})


def test_a_config_survives_its_json_form() -> None:
    config = _config(rank=8, sample_prompts=("a", "b"), init_lora="parent.safetensors")
    values = config.to_dict()
    assert values["sample_prompts"] == ["a", "b"]
    assert TrainingConfig.from_dict(values) == config
