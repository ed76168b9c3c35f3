"""The training child writes its progress to the status file the review app reads (step/total,
loss, ETA, epoch, the latest sample), without Dagster's help."""

from __future__ import annotations

from pathlib import Path

from dagster import DagsterInstance, Output, asset
from dagster import materialize as dagster_materialize

from lora_pipeline.defs.training import run_training_process
from lora_pipeline.training.data import TrainingExample
from lora_pipeline.training.job import TrainingJob
from lora_pipeline.training.status import read_status
from lora_pipeline_tests.training.conftest import RESUME_STEPS, resume_config


def test_the_child_writes_its_progress_for_the_review_app(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    job = TrainingJob(
        resume_config(tiny_sd, tmp_path / "state"), examples, tmp_path / "lora.safetensors"
    )
    status_file = tmp_path / "data" / "status" / "aiko" / "training.json"

    @asset(name="trained_lora")
    def trained(context) -> Output:  # noqa: ANN001 - Dagster reads the annotation at runtime
        result, _ = run_training_process(context, job, status_file=status_file)
        return Output({"steps": result.steps})

    assert dagster_materialize([trained], instance=DagsterInstance.ephemeral()).success
    status = read_status(status_file)
    assert status is not None and status["state"] == "running"
    # The last epoch's report is always written (progress only once a second).
    assert status["step"] == status["total_steps"] == RESUME_STEPS
    assert status["epoch"] == status["epochs"] and "updated_at" in status
