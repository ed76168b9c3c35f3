"""Which backend trains a job: the built-in trainer, or kohya sd-scripts.

The one place that knows both backends; each of them imports only the job's types, so neither
depends on the other or on this choice.
"""

from __future__ import annotations

import json
from pathlib import Path

from lora_pipeline.training.experiment import write_experiment_log
from lora_pipeline.training.job import TrainingJob, TrainingReporter
from lora_pipeline.training.kohya_backend import train_with_kohya
from lora_pipeline.training.reports import TrainingResult
from lora_pipeline.training.trainer import train_lora


def run_job(job: TrainingJob, reporter: TrainingReporter) -> TrainingResult:
    """Run `job` with its backend, reporting as it goes; the experiment log goes beside the
    LoRA file."""
    result = _train(job, reporter)
    log = write_experiment_log(job.backend, result, _kohya_command(job))
    reporter.log(f"experiment log: {log}")
    return result


def _kohya_command(job: TrainingJob) -> list[str] | None:
    command = Path(job.work_dir or "") / "command.json" if job.backend == "kohya" else None
    try:
        return json.loads(command.read_text("utf-8")) if command else None
    except (OSError, ValueError):
        return None


def _train(job: TrainingJob, reporter: TrainingReporter) -> TrainingResult:
    if job.backend == "kohya":
        return train_with_kohya(job, reporter)
    return train_lora(
        job.config,
        job.examples,
        job.output_file,
        reporter.progress,
        on_epoch=reporter.epoch,
        should_stop=reporter.should_stop,
        log=reporter.log,
    )
