"""The one Definitions object of the lora_pipeline code location."""

from __future__ import annotations

from dagster import Definitions

from lora_pipeline.config import Settings
from lora_pipeline.defs import dataset, evaluation, generation, ingest, training
from lora_pipeline.defs.executor import chosen_executor
from lora_pipeline.defs.jobs import ingest_job, regenerate_job, training_job
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource
from lora_pipeline.defs.schedules import (
    dataset_quality_job,
    nightly_quality_schedule,
    stuck_jobs_schedule,
    sweep_stuck_jobs_job,
)
from lora_pipeline.defs.sensors import (
    character_partitions_sensor,
    comfyui_output_sensor,
    generation_request_sensor,
    ingest_sensor,
    rejection_sensor,
    training_sensor,
)

ASSETS = [
    ingest.ingested_frames,
    ingest.classified_frames,
    generation.generated_images,
    dataset.approved_dataset,
    dataset.captions,
    dataset.shot_splits,
    training.trained_lora,
    evaluation.eval_grid,
]


def build_resources() -> dict[str, object]:
    return {
        "registry": RegistryResource(),
        "data_root": DataRootResource(),
        "models": ModelsResource(),
    }


defs = Definitions(
    assets=ASSETS,
    jobs=[ingest_job, regenerate_job, training_job, sweep_stuck_jobs_job, dataset_quality_job],
    sensors=[
        character_partitions_sensor,
        ingest_sensor,
        comfyui_output_sensor,
        rejection_sensor,
        generation_request_sensor,
        training_sensor,
    ],
    schedules=[stuck_jobs_schedule, nightly_quality_schedule],
    resources=build_resources(),
    # LORA_PIPELINE_EXECUTOR: the run's steps in its own processes, or on celery workers.
    executor=chosen_executor(Settings.current()),
)
