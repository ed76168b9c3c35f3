"""A GPU-pool asset that records when it runs and whether another probe ran at the same time.

Run as `python -m lora_pipeline_tests.defs.pool_probe NAME` with DAGSTER_HOME and
POOL_PROBE_DIR set; test_gpu_pool.py starts two at once.
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
    reconstructable,
)

from lora_pipeline.defs.partitions import GPU_POOL

WAIT_FOR_OTHER_S = 6.0


def _active_others(folder: Path, me: str) -> list[str]:
    starts = {p.stem.removeprefix("start-") for p in folder.glob("start-*")}
    ends = {p.stem.removeprefix("end-") for p in folder.glob("end-*")}
    return sorted(starts - ends - {me})


@asset(pool=GPU_POOL)
def gpu_probe(context: AssetExecutionContext) -> None:
    folder, me = Path(os.environ["POOL_PROBE_DIR"]), os.environ["POOL_PROBE_NAME"]
    started = time.time()
    (folder / f"start-{me}.json").write_text(json.dumps({"t": started}))
    seen: list[str] = []
    while time.time() - started < WAIT_FOR_OTHER_S and not seen:
        seen = _active_others(folder, me)
        time.sleep(0.1)
    record = {"start": started, "end": time.time(), "saw_running": seen}
    (folder / f"end-{me}.json").write_text(json.dumps(record))


probe_job = define_asset_job("gpu_probe_job", selection=[gpu_probe])
defs = Definitions(assets=[gpu_probe], jobs=[probe_job])


def get_probe_job():
    return defs.resolve_job_def("gpu_probe_job")


if __name__ == "__main__":
    os.environ["POOL_PROBE_NAME"] = sys.argv[1]
    with DagsterInstance.get() as instance:
        result = execute_job(reconstructable(get_probe_job), instance=instance)
    sys.exit(0 if result.success else 1)
