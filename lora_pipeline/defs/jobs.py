"""Jobs the sensors and schedules launch, each a selection of the asset graph."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from lora_pipeline.defs.gpu import gpu_run_tags
from lora_pipeline.defs.partitions import character_partitions

ingest_job = define_asset_job(
    "ingest_job",
    selection=AssetSelection.assets("ingested_frames", "classified_frames"),
    partitions_def=character_partitions,
    description="Ingest a character's new sources and sort their frames into characters.",
    tags=gpu_run_tags("batch"),
)

regenerate_job = define_asset_job(
    "regenerate_job",
    selection=AssetSelection.assets("generated_images"),
    partitions_def=character_partitions,
    description="Generate images of a character (regenerations carry rejection negatives).",
    tags=gpu_run_tags("interactive"),
)

training_job = define_asset_job(
    "training_job",
    selection=AssetSelection.assets(
        "approved_dataset", "captions", "shot_splits", "trained_lora", "eval_grid"
    ),
    partitions_def=character_partitions,
    description="From the approved images to an evaluated LoRA candidate.",
    tags=gpu_run_tags("batch"),
)
