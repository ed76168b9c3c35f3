"""Which backend trains a job: the built-in trainer, or kohya sd-scripts.

The one place that knows both backends; each of them imports only the job's types, so neither
depends on the other or on this choice.
"""

from __future__ import annotations

from lora_pipeline.training.job import TrainingJob, TrainingReporter
from lora_pipeline.training.kohya_backend import train_with_kohya
from lora_pipeline.training.reports import TrainingResult
from lora_pipeline.training.trainer import train_lora


def run_job(job: TrainingJob, reporter: TrainingReporter) -> TrainingResult:
    """Run `job` with its backend, reporting as it goes."""
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
