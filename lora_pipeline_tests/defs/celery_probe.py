"""A GPU step run by the celery executor, recording which host's worker ran it and when.

It is a GPU step like the pipeline's (the `gpu` pool, `gpu_op_tags`, the lock through
`defs.gpu.gpu_step`), sent to the queue CELERY_PROBE_QUEUE names so that a test's workers are
the only ones that can take it. Each attempt writes `start-<partition>-<pid>.json` with the
worker's GPU lock folder (which host it is), holds the GPU, and writes `end-…` when done.

CELERY_PROBE_MODE=meet: a step holds the GPU until a step of the other partition has started
too, or GRACE_S. CELERY_PROBE_MODE=hold: the first attempt of a partition holds the GPU until
the test kills its worker; a later attempt (on another worker) finishes at once.

Run as `python -m lora_pipeline_tests.defs.celery_probe PARTITION` with DAGSTER_HOME,
LORA_PIPELINE_BROKER_URL, CELERY_PROBE_QUEUE and CELERY_PROBE_DIR set: it executes the job for
that partition as a run worker does and exits 0 when the run succeeded.
"""

import json
import os
import sys
import time
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    DagsterInstance,
    Definitions,
    StaticPartitionsDefinition,
    asset,
    define_asset_job,
    execute_job,
    reconstructable,
)

from lora_pipeline.config import Settings
from lora_pipeline.defs.executor import CELERY_QUEUE_TAG, GPU_QUEUE, chosen_executor
from lora_pipeline.defs.gpu import gpu_op_tags, gpu_step
from lora_pipeline.defs.partitions import GPU_POOL
from lora_pipeline.defs.resources import ModelsResource

PARTITIONS = ("one", "two")
GRACE_S = 20.0
HOLD_LIMIT_S = 120.0
QUEUE = os.environ.get("CELERY_PROBE_QUEUE", GPU_QUEUE)


@asset(
    pool=GPU_POOL,
    partitions_def=StaticPartitionsDefinition(list(PARTITIONS)),
    op_tags={**gpu_op_tags("batch"), CELERY_QUEUE_TAG: QUEUE},
)
def celery_probe(context: AssetExecutionContext, models: ModelsResource) -> None:
    folder, partition = Path(os.environ["CELERY_PROBE_DIR"]), context.partition_key
    earlier = list(folder.glob(f"start-{partition}-*.json"))
    with gpu_step(context, models, "batch"):
        started = time.time()
        record = {"t": started, "lock_dir": str(models.settings().gpu_lock_dir), "pid": os.getpid()}
        (folder / f"start-{partition}-{os.getpid()}.json").write_text(json.dumps(record))
        if os.environ.get("CELERY_PROBE_MODE") == "hold" and not earlier:
            time.sleep(HOLD_LIMIT_S)  # the test kills this worker meanwhile
            raise RuntimeError("the test never killed the worker holding the step")
        others = [p for p in PARTITIONS if p != partition]
        while time.time() - started < GRACE_S and not any(
            any(folder.glob(f"start-{o}-*.json")) for o in others
        ):
            time.sleep(0.1)
        record["end"] = time.time()
        (folder / f"end-{partition}-{os.getpid()}.json").write_text(json.dumps(record))


probe_job = define_asset_job(
    "celery_probe_job",
    selection=[celery_probe],
    executor_def=chosen_executor(Settings.current().with_overrides(executor="celery")),
)
defs = Definitions(assets=[celery_probe], jobs=[probe_job], resources={"models": ModelsResource()})


def get_probe_job():
    return defs.resolve_job_def("celery_probe_job")


if __name__ == "__main__":
    with DagsterInstance.get() as instance:
        result = execute_job(
            reconstructable(get_probe_job),
            instance=instance,
            tags={"dagster/partition": sys.argv[1]},
            raise_on_error=False,
        )
    sys.exit(0 if result.success else 1)
