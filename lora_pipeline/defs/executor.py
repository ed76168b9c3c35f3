"""The executor of the code location's jobs, chosen by `LORA_PIPELINE_EXECUTOR`.

`celery` is production mode past one machine (DESIGN §4b): dagster-celery sends each step to a
queue of the broker and `lora-pipeline worker`s execute them. GPU steps carry the op tag
`dagster-celery/queue: gpu` (`gpu_op_tags`); every other step goes to the default queue, `cpu`.

All GPU hosts serve the one `gpu` queue, each with one worker of concurrency 1: a host takes a
GPU step only when its GPU is free, so two trainings at once land one per host, and a step of a
host that dies goes back to the queue for another host (late acknowledgement, below). A queue
per host would pin each step to one host before anyone knows which is free, and a dead host's
steps would wait for it. A worker may also serve its own queue (`gpu-<host>`) for work meant for
that machine. The pools and the per-host GPU lock stay: the pools still queue GPU steps in the
UI, and the lock still keeps a host's GPU work apart whatever starts it (a worker's step, a
`materialize()` from the CLI).
"""

from __future__ import annotations

from typing import Any

from dagster import ExecutorDefinition, in_process_executor

from lora_pipeline.config import Settings

GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"
# dagster-celery's documented op tag (dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG), named here
# so that the GPU op tags need not import dagster_celery where it is not used.
CELERY_QUEUE_TAG = "dagster-celery/queue"

# Celery settings shared by the executor (which sends) and the workers (which consume).
# Late acknowledgement: a task is acknowledged when it finishes, so a worker killed mid-step
# leaves its message unacknowledged and the broker hands it to another worker of the queue;
# a worker also reserves nothing while its one slot is busy (prefetch 1 with late acks), so a
# second step waits in the queue for a free host rather than behind the first on a busy one.
CELERY_CONFIG_SOURCE: dict[str, Any] = {
    "task_default_queue": CPU_QUEUE,
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
}


def celery_executor_config(settings: Settings) -> dict[str, Any]:
    """The `celery_executor` config of these settings; `lora-pipeline worker` uses the same."""
    return {"broker": settings.broker_url, "config_source": dict(CELERY_CONFIG_SOURCE)}


def chosen_executor(settings: Settings) -> ExecutorDefinition | None:
    """The executor `LORA_PIPELINE_EXECUTOR` names, configured from the settings; None for
    `multiprocess`, Dagster's default (which a run's config may still switch to in-process)."""
    if settings.executor == "in_process":
        return in_process_executor
    if settings.executor == "multiprocess":
        return None
    from dagster_celery import celery_executor

    return celery_executor.configured(celery_executor_config(settings), name="celery_executor")
