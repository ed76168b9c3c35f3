"""A training gives the GPU to interactive work: at a step boundary it saves its exact state,
lets the lock go, waits, and resumes by itself; no step is repeated or lost and the LoRA is the
one an uninterrupted run makes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, Output, asset
from dagster import materialize as dagster_materialize

from lora_pipeline.defs.resources import ModelsResource
from lora_pipeline.defs.training import train_sharing_the_gpu
from lora_pipeline.gpu_lock import GpuLock
from lora_pipeline.training.job import GpuYield, TrainingJob
from lora_pipeline.training.pipes_entry import EXIT_YIELDED
from lora_pipeline.training.trainer import TrainingExample, TrainingResult
from lora_pipeline_tests.training.conftest import RESUME_STEPS, assert_same_lora, resume_config

# An interactive GPU job in its own process: waits for the GPU, holds it briefly, records when.
INTERACTIVE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from lora_pipeline.gpu_lock import GpuLock
    folder, record = Path(sys.argv[1]), Path(sys.argv[2])
    with GpuLock(folder, "cpu").hold("regeneration", "interactive"):
        start = time.time()
        time.sleep(0.2)
    record.write_text(json.dumps({"start": start, "end": time.time()}))
    """
)


def _job(tiny_sd: Path, tmp_path: Path, examples: list[TrainingExample], **yields: object):
    config = resume_config(tiny_sd, tmp_path / "state")
    policy = GpuYield(str(tmp_path / "locks"), "cpu", **yields)
    return TrainingJob(config, examples, tmp_path / "lora.safetensors", gpu_yield=policy)


def _command(job_file: Path) -> list[str]:
    return [sys.executable, "-m", "lora_pipeline.training.pipes_entry", "--job", str(job_file)]


def test_the_child_pauses_for_an_interactive_waiter_and_resumes_exactly(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path, uninterrupted: TrainingResult
) -> None:
    job = _job(tiny_sd, tmp_path, examples, min_run_s=0.0)
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job.to_dict()))
    command = _command(job_file)
    lock = GpuLock(tmp_path / "locks", "cpu")
    served = threading.Event()

    def interactive() -> None:
        with lock.hold("regeneration", "interactive"):
            served.set()

    with lock.hold("training", "batch"):
        waiter = threading.Thread(target=interactive)
        waiter.start()
        paused = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert not served.is_set(), "the training still held the GPU while it ran"
    waiter.join(timeout=30)
    assert served.is_set()
    assert paused.returncode == EXIT_YIELDED, paused.stderr[-2000:]
    report = json.loads(next(x for x in paused.stdout.splitlines() if '"interrupted"' in x))
    assert report["reason"] == "yield" and report["waiting"] == 1
    assert 1 <= report["step"] < RESUME_STEPS and Path(report["state"]).is_dir()
    assert "pausing at step" in paused.stdout

    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    result = json.loads(next(x for x in finished.stdout.splitlines() if '"result"' in x))["result"]
    assert result["resumed_from_step"] == report["step"]
    assert_same_lora(TrainingResult.from_dict(result), uninterrupted)


def _wait_once(lock: GpuLock) -> None:
    with lock.hold("regeneration", "interactive"):
        pass


def test_no_pause_before_the_shortest_run(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    job = _job(tiny_sd, tmp_path, examples, min_run_s=3600.0)
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job.to_dict()))
    lock = GpuLock(tmp_path / "locks", "cpu")
    with lock.hold("training", "batch"):
        waiter = threading.Thread(target=_wait_once, args=(lock,))
        waiter.start()
        finished = subprocess.run(_command(job_file), capture_output=True, text=True, timeout=300)
    waiter.join(timeout=30)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "pausing" not in finished.stdout


@pytest.mark.slow
def test_the_asset_yields_to_interactive_work_and_completes_the_same_lora(
    tiny_sd: Path,
    examples: list[TrainingExample],
    tmp_path: Path,
    uninterrupted: TrainingResult,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORA_PIPELINE_TRAINING_MIN_RUN_S", "0")
    locks = tmp_path / "home" / "locks"
    config = resume_config(tiny_sd, tmp_path / "state")
    job = TrainingJob(config, examples, tmp_path / "lora.safetensors")
    record = tmp_path / "interactive.json"
    outcome: dict[str, object] = {}

    def start_interactive_once_training_holds_the_gpu() -> None:
        lock = GpuLock(locks, "cpu")
        while (holder := lock.current_holder()) is None or "trained_lora" not in holder.holder:
            time.sleep(0.05)
        outcome["interactive"] = subprocess.Popen(
            [sys.executable, "-c", INTERACTIVE, str(locks), str(record)]
        )

    @asset(name="trained_lora")
    def trained(context) -> Output:  # noqa: ANN001 - Dagster reads the annotation at runtime
        watcher = threading.Thread(target=start_interactive_once_training_holds_the_gpu)
        watcher.start()
        models = ModelsResource(device="cpu")
        result, _reported, pauses = train_sharing_the_gpu(context, models, job)
        watcher.join(timeout=30)
        outcome["result"], outcome["pauses"], outcome["end"] = result, pauses, time.time()
        return Output({"steps": result.steps})

    instance = DagsterInstance.ephemeral()
    run = dagster_materialize([trained], instance=instance)
    assert run.success
    outcome["interactive"].wait(timeout=60)
    interactive = json.loads(record.read_text())
    assert interactive["end"] < outcome["end"], "the regeneration ran before the training ended"
    pauses = outcome["pauses"]
    assert pauses.count == 1 and pauses.jobs == 1 and pauses.seconds > 0
    result = outcome["result"]
    assert 1 <= result.resumed_from_step < RESUME_STEPS
    assert_same_lora(result, uninterrupted)
    logs = [e.message for e in instance.all_logs(run.run_id) if e.message]
    assert any("training resumes: paused 1 time(s) for 1 interactive job(s)" in m for m in logs)
    assert any("trained_lora" in m and "waiting for the GPU" in m for m in logs)
    assert not any(
        e.event_type == DagsterEventType.STEP_FAILURE for e in run.all_events
    )
