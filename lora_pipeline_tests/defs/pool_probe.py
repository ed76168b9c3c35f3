"""A GPU asset that records when it runs and whether another probe ran at the same time.

It is a GPU step like the pipeline's: in the `gpu` pool, holding the device's lock through
`defs.gpu.gpu_step` (unless POOL_PROBE_LOCK=0, for the controls).

Run as `python -m lora_pipeline_tests.defs.pool_probe NAME [job|materialize] [ROUNDS]` with
DAGSTER_HOME, POOL_PROBE_DIR and LORA_PIPELINE_GPU_LOCK_DIR set: `job` executes it as a run
worker does (pools apply), `materialize` as an in-process `materialize()` does (pools do not);
test_gpu_pool.py starts two at once.

One round (the default) holds the GPU until the other process is about to execute and then a
grace period, so the two always contend. Several rounds (ROUNDS > 1) repeat the contest with
short holds: both processes meet at a barrier before each round and execute at once, and each
probe records when its process was ready, so the test can count the rounds that contended.
"""

import json
import os
import sys
import threading
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
# In a round of several: how long a probe holds the GPU, and when a waiting probe process
# writes down what the pool and the lock hold (its diagnostics, for a failing test).
ROUND_HOLD_S = 0.5
DIAGNOSE_AFTER_S = 30.0


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
    if "POOL_PROBE_ROUND" in os.environ:
        _round_probe()
        return
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


def _round_probe() -> None:
    """One round of several: hold the GPU for ROUND_HOLD_S, noting whether the other probe of
    this round ran meanwhile."""
    folder = Path(os.environ["POOL_PROBE_DIR"]) / f"round-{os.environ['POOL_PROBE_ROUND']}"
    me = os.environ["POOL_PROBE_NAME"]
    started = time.time()
    (folder / f"start-{me}.json").write_text(json.dumps({"t": started}))
    seen: list[str] = []
    while time.time() - started < ROUND_HOLD_S:
        seen = seen or _active_others(folder, me)
        time.sleep(0.02)
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


def _diagnose(instance: DagsterInstance, lock_dir: Path, out: Path, stop: threading.Event) -> None:
    """If a round takes too long, write what the pool and the lock hold at that moment."""
    if stop.wait(DIAGNOSE_AFTER_S):
        return
    info = instance.event_log_storage.get_concurrency_info(GPU_POOL)
    holders = {p.name: p.read_text() for p in lock_dir.glob("*.holder.json")}
    record = {
        "at": time.time(),
        "slot_count": info.slot_count,
        "claimed_slots": [(s.run_id, s.step_key) for s in info.claimed_slots],
        "pending_steps": [(s.run_id, s.step_key, s.priority) for s in info.pending_steps],
        "lock_holders": holders,
    }
    out.write_text(json.dumps(record, default=str))


def _run_rounds(instance: DagsterInstance, me: str, mode: str, rounds: int) -> bool:
    """Meet the other probe process before each round, then execute at once."""
    folder, others = Path(os.environ["POOL_PROBE_DIR"]), [p for p in PROBES if p != me]
    lock_dir = Path(os.environ["LORA_PIPELINE_GPU_LOCK_DIR"])
    for number in range(rounds):
        round_dir = folder / f"round-{number}"
        round_dir.mkdir(exist_ok=True)
        (round_dir / f"ready-{me}.json").write_text(json.dumps({"t": time.time()}))
        waited = time.time()
        while not all((round_dir / f"ready-{o}.json").exists() for o in others):
            if time.time() - waited > READY_TIMEOUT_S:
                raise RuntimeError(f"round {number}: the other probe process never got ready")
            time.sleep(0.02)
        os.environ["POOL_PROBE_ROUND"] = str(number)
        stop = threading.Event()
        diag = round_dir / f"diagnostics-{me}.json"
        watchdog = threading.Thread(target=_diagnose, args=(instance, lock_dir, diag, stop))
        watchdog.start()
        try:
            if not _run(instance, mode):
                return False
        finally:
            stop.set()
            watchdog.join()
    return True


if __name__ == "__main__":
    name = os.environ["POOL_PROBE_NAME"] = sys.argv[1]
    mode = sys.argv[2] if len(sys.argv) > 2 else "job"
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    with DagsterInstance.get() as instance:
        if rounds > 1:
            success = _run_rounds(instance, name, mode, rounds)
        else:
            (Path(os.environ["POOL_PROBE_DIR"]) / f"ready-{name}").touch()
            success = _run(instance, mode)
    sys.exit(0 if success else 1)
