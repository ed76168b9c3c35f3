"""The errors of a training run that every backend raises: bad settings or data, and a stop.

They live apart from the trainer so that the job, the kohya backend and the training process
can raise and catch them without importing the built-in trainer (torch, diffusers, peft).
"""

from __future__ import annotations

from pathlib import Path

from lora_pipeline.errors import PipelineError

# What to change when a run runs out of memory: the trainer's error says it, and so does the
# asset when the kernel killed the training process.
OOM_ADVICE = (
    "lower batch_size (1 is enough for a character LoRA), enable gradient_checkpointing, "
    "lower the resolution, use mixed_precision bf16/fp16, or the adamw8bit optimizer; "
    "the run resumes from its last saved epoch"
)


class TrainingError(PipelineError, ValueError):
    """Training settings or data that cannot produce a LoRA, or a run that diverged."""


class TrainingInterrupted(PipelineError, RuntimeError):
    """The run was asked to stop; its state was saved so that the next run resumes it."""

    def __init__(self, step: int, state_path: Path | None) -> None:
        where = f" (state saved in {state_path})" if state_path else ""
        super().__init__(f"training stopped at step {step}{where}")
        self.step = step
        self.state_path = state_path
