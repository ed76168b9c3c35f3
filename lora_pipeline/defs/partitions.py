"""The one partition set of the code location: a character slug per partition."""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

CHARACTER_PARTITIONS_NAME = "character"
character_partitions = DynamicPartitionsDefinition(name=CHARACTER_PARTITIONS_NAME)

# Every asset that uses the GPU declares one of these pools, which dagster.yaml and
# `lora-pipeline init` limit to one slot each: batch work (classification, training, eval)
# queues in `gpu`, interactive work (images for review, regenerations) in `gpu_interactive`.
# Two pools, because a training that yields the GPU keeps its step, and with it its pool slot:
# in one pool the regeneration it yields to would wait for that slot and never reach the GPU.
# What keeps the two pools off the GPU at the same time is the device's OS lock (defs/gpu.py),
# which also serves a waiting interactive step first.
GPU_POOL = "gpu"
INTERACTIVE_GPU_POOL = "gpu_interactive"
GPU_POOLS = (GPU_POOL, INTERACTIVE_GPU_POOL)
