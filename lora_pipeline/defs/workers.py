"""dagster-celery workers: the command that starts one, and what the broker says about them.

A worker is dagster-celery's app (`celery -A dagster_celery.app worker`) with the executor's
Celery settings, which it reads from a `dagster_celery_config` module on its path, as
`dagster-celery worker start` arranges; that command is not used because it opens the Dagster
instance only to find a folder for that module, and its workers cannot be given a concurrency.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from lora_pipeline.config import Settings
from lora_pipeline.defs.executor import GPU_QUEUE, celery_executor_config
from lora_pipeline.files import atomic_write_text

CONFIG_MODULE = "dagster_celery_config"
CELERY_APP = "dagster_celery.app"
INSPECT_TIMEOUT_S = 3.0


def is_gpu_queue(queue: str) -> bool:
    return queue == GPU_QUEUE or queue.startswith(GPU_QUEUE + "-")


def write_worker_config(settings: Settings, folder: Path) -> Path:
    """The executor's Celery settings as the module dagster-celery's app reads at start."""
    config = celery_executor_config(settings)
    lines = [f"broker_url = {config['broker']!r}", "result_backend = 'rpc://'"]
    lines += [f"{key} = {value!r}" for key, value in config["config_source"].items()]
    atomic_write_text(folder / f"{CONFIG_MODULE}.py", "\n".join(lines) + "\n")
    return folder


def worker_argv(queues: list[str], name: str, concurrency: int) -> list[str]:
    """`celery worker` for these queues: prefork, so a step runs in a child that the kernel
    kills with the worker (celery sets the child's parent-death signal), and its lock with it."""
    return [
        sys.executable, "-m", "celery", "-A", CELERY_APP, "worker",
        "--queues", ",".join(queues),
        "--hostname", f"{name}@%h",
        "--concurrency", str(concurrency),
        "--prefetch-multiplier", "1",
        "--loglevel", "INFO",
    ]


@dataclass(frozen=True)
class WorkerInfo:
    """A worker that answered: its name, the queues it consumes, how many steps it runs at once."""

    name: str
    queues: tuple[str, ...]
    concurrency: int | None


def broker_problem(settings: Settings) -> str | None:
    """Why the broker cannot be reached (None: it can)."""
    from kombu import Connection

    try:
        with Connection(settings.broker_url, connect_timeout=INSPECT_TIMEOUT_S) as connection:
            connection.ensure_connection(max_retries=1, timeout=INSPECT_TIMEOUT_S)
    except Exception as error:  # kombu raises the transport's own errors
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


def live_workers(settings: Settings) -> list[WorkerInfo]:
    """The workers that answer through the broker, with their queues and concurrency."""
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app

    app = make_app(CeleryExecutor.for_cli(**celery_executor_config(settings)).app_args())
    try:
        inspect = app.control.inspect(timeout=INSPECT_TIMEOUT_S)
        queues = inspect.active_queues() or {}
        stats = inspect.stats() or {}
    finally:
        app.close()
    return [
        WorkerInfo(
            name=name,
            queues=tuple(sorted(q["name"] for q in consumed)),
            concurrency=(stats.get(name) or {}).get("pool", {}).get("max-concurrency"),
        )
        for name, consumed in sorted(queues.items())
    ]
