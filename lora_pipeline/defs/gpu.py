"""GPU steps: queued by Dagster's `gpu` pool, made exclusive by the device's OS lock.

The pool (limit 1) keeps GPU steps queued and visible in the UI; `gpu_step` holds the device's
lock (lora_pipeline.gpu_lock) around the work itself, which also covers in-process
`materialize()` calls that ignore pools. Interactive steps (images for review, regenerations)
are taken before batch steps (training, evaluation) both by the pool, through Dagster's
`dagster/priority` op tag, and by the lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import AssetExecutionContext, MetadataValue

from lora_pipeline.defs.executor import CELERY_QUEUE_TAG, GPU_QUEUE
from lora_pipeline.defs.resources import ModelsResource
from lora_pipeline.gpu_lock import GpuLease, Priority
from lora_pipeline.model_runtime import release_gpu_models
from lora_pipeline.process_memory import describe_memory, process_memory, reset_cuda_peak

# Dagster's documented priority tag: pool slots go in the order of run + step priority.
PRIORITY_TAG = "dagster/priority"
STEP_PRIORITY: dict[Priority, int] = {"interactive": 10, "batch": -10}


def gpu_op_tags(priority: Priority) -> dict[str, str]:
    """The op tags of a GPU asset of this priority; under the celery executor the step goes to
    the GPU queue (defs/executor.py), other executors ignore that tag."""
    return {PRIORITY_TAG: str(STEP_PRIORITY[priority]), CELERY_QUEUE_TAG: GPU_QUEUE}


# The run tag dagster.yaml's run queue limits (tag_concurrency_limits): batch GPU runs may not
# take every run slot, so a regeneration is never queued behind trainings waiting for the GPU.
GPU_CLASS_TAG = "lora_pipeline/gpu_class"


def gpu_run_tags(priority: Priority) -> dict[str, str]:
    """The run tags of a job whose GPU work is of this priority: the run queue starts
    interactive runs first (`dagster/priority`) and keeps a slot free of batch runs."""
    return {PRIORITY_TAG: str(STEP_PRIORITY[priority]), GPU_CLASS_TAG: priority}


@contextmanager
def gpu_step(
    context: AssetExecutionContext,
    models: ModelsResource,
    priority: Priority,
    escalate_after_s: float | None = None,
) -> Iterator[GpuLease]:
    """Hold the GPU for the body of a step; the wait, if any, is logged with who holds it.
    The models the step loaded are released before the lock is, so the next holder finds the
    device empty; the process's memory before the body and after the release goes to the log
    and to the step's metadata (`gpu_step_memory`)."""
    partition = f" {context.partition_key}" if context.has_partition_key else ""
    holder = f"run {context.run_id[:8]} {context.op_def.name}{partition}"
    lock = models.runtime().gpu_lock()
    with lock.hold(holder, priority, context.log.info, escalate_after_s) as lease:
        reset_cuda_peak()
        before = process_memory()
        try:
            yield lease
        finally:
            release_gpu_models()
        after = process_memory()
    context.log.info(describe_memory(before, after))
    _add_memory_metadata(context, before, after)


def _add_memory_metadata(
    context: AssetExecutionContext, before: dict[str, float], after: dict[str, float]
) -> None:
    # A step may hold the GPU more than once (a training that yields): the last hold counts.
    output = context.assets_def.get_output_name_for_asset_key(context.asset_key)
    figures = MetadataValue.json({"before": before, "after": after})
    context.add_output_metadata({"gpu_step_memory": figures}, output_name=output)
