"""The one partition set of the code location: a character slug per partition."""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

CHARACTER_PARTITIONS_NAME = "character"
character_partitions = DynamicPartitionsDefinition(name=CHARACTER_PARTITIONS_NAME)

# Every asset that uses the GPU declares this pool; dagster.yaml and `lora-pipeline init`
# limit it to one slot so two GPU steps never run at once, even across runs.
GPU_POOL = "gpu"
