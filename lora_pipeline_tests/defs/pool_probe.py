"""A GPU asset that records when it runs and whether another probe ran at the same time.

It is a GPU step like the pipeline's: in the `gpu` pool, holding the device's lock through
`defs.gpu.gpu_step` (unless POOL_PROBE_LOCK=0, for the controls).

Run as `python -m lora_pipeline_tests.defs.pool_probe NAME [job|materialize]` with
DAGSTER_HOME, POOL_PROBE_DIR and LORA_PIPELINE_GPU_LOCK_DIR set: `job` executes it as a run
worker does (pools apply), `materialize` as an in-process `materialize()` does (pools do not);
test_gpu_pool.py starts two at once.
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
    asset,
    define_asset_job,
    execute_job,
    in_process_executor,
    materialize,
    reconstructable,
)

from lora_pipeline.defs.gpu import gpu_step
from lora_pipeline.defs.partitions import GPU_POOL
from lora_pipeline.defs.resources import ModelsResource

PROBES = ("a", "b")
# Once both probe processes are about to execute, how long a running probe waits for the other
# to start. Without a pool limit the other starts well within it; with the limit it never can.
GRACE_S = 8.0
READY_TIMEOUT_S = 120.0


def _active_others(folder: Path, me: str) -> list[str]:
    starts = {p.stem.removeprefix("start-") for p in folder.glob("start-*")}
    ends = {p.stem.removeprefix("end-") for p in folder.glob("end-*")}
    return sorted(starts - ends - {me})


@asset(pool=GPU_POOL)
def gpu_probe(context: AssetExecutionContext, models: ModelsResource) -> None:
    if os.environ.get("POOL_PROBE_LOCK", "1") == "0":
        _probe()
        return
    with gpu_step(context, models, "batch"):
        _probe()


def _probe() -> None:
    folder, me = Path(os.environ["POOL_PROBE_DIR"]), os.environ["POOL_PROBE_NAME"]
    started = time.time()
    (folder / f"start-{me}.json").write_text(json.dumps({"t": started}))
    while not all((folder / f"ready-{name}").exists() for name in PROBES):
        if time.time() - started > READY_TIMEOUT_S:
            raise RuntimeError("the other probe process never got ready")
        time.sleep(0.1)
    all_ready = time.time()
    seen: list[str] = []
    while time.time() - all_ready < GRACE_S and not seen:
        seen = _active_others(folder, me)
        time.sleep(0.1)
    record = {"start": started, "end": time.time(), "saw_running": seen}
    (folder / f"end-{me}.json").write_text(json.dumps(record))


# In-process steps: each probe process opens the SQLite instance once, as a run worker does.
probe_job = define_asset_job(
    "gpu_probe_job", selection=[gpu_probe], executor_def=in_process_executor
)
defs = Definitions(assets=[gpu_probe], jobs=[probe_job], resources={"models": ModelsResource()})


def get_probe_job():
    return defs.resolve_job_def("gpu_probe_job")


def _run(instance: DagsterInstance, mode: str) -> bool:
    if mode == "materialize":
        resources = {"models": ModelsResource()}
        return materialize([gpu_probe], instance=instance, resources=resources).success
    return execute_job(reconstructable(get_probe_job), instance=instance).success


if __name__ == "__main__":
    os.environ["POOL_PROBE_NAME"] = sys.argv[1]
    mode = sys.argv[2] if len(sys.argv) > 2 else "job"
    with DagsterInstance.get() as instance:
        (Path(os.environ["POOL_PROBE_DIR"]) / f"ready-{sys.argv[1]}").touch()
        success = _run(instance, mode)
    sys.exit(0 if success else 1)
