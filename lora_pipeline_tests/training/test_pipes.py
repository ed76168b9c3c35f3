"""The training child process: a real crash (SIGKILL after epoch 1, as the OOM killer would)
fails the Dagster asset with a clear message and the next run resumes to the same LoRA; a cancel
(SIGINT, what Dagster sends) saves the current step and the next run carries on from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, DagsterEventType, DagsterInstance, Output, asset
from dagster import materialize as dagster_materialize

from lora_pipeline.defs.training import run_training_process
from lora_pipeline.training.job import TrainingJob
from lora_pipeline.training.pipes_entry import KILL_AFTER_EPOCH_ENV
from lora_pipeline.training.trainer import TrainingExample, TrainingResult
from lora_pipeline_tests.training.conftest import RESUME_STEPS, assert_same_lora, resume_config


def _materialize(instance: DagsterInstance, job: TrainingJob, env: dict[str, str] | None):
    outcome: dict[str, object] = {}

    @asset(name="trained_lora")
    def trained(context) -> Output:  # noqa: ANN001 - Dagster reads the annotation at runtime
        result, reported = run_training_process(context, job, env=env)
        outcome["result"], outcome["reported"] = result, reported
        # Pipes asks for a typed event stream: the value goes out wrapped, as trained_lora does.
        return Output({"steps": result.steps})

    run = dagster_materialize([trained], instance=instance, raise_on_error=False)
    return run, outcome


def test_a_killed_training_child_fails_the_asset_and_the_next_run_resumes(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path, uninterrupted: TrainingResult
) -> None:
    job = TrainingJob(
        resume_config(tiny_sd, tmp_path / "state"), examples, tmp_path / "lora.safetensors"
    )
    instance = DagsterInstance.ephemeral()

    crashed, _ = _materialize(instance, job, {KILL_AFTER_EPOCH_ENV: "1"})
    assert not crashed.success, "the asset fails; the run worker (this process) lives on"
    failure = next(e for e in crashed.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    message = str(failure.event_specific_data.error.message)
    assert "killed by signal 9" in message and "lower batch_size" in message

    resumed, outcome = _materialize(instance, job, None)
    assert resumed.success
    result = outcome["result"]
    assert isinstance(result, TrainingResult)
    assert result.resumed_from_step == 2  # the state saved at the end of epoch 1
    assert_same_lora(result, uninterrupted)
    assert outcome["reported"]["steps"].value == RESUME_STEPS
    epochs = [
        e.asset_observation_data.asset_observation.metadata["epoch"].value
        for e in resumed.all_events
        if e.event_type == DagsterEventType.ASSET_OBSERVATION
    ]
    assert epochs == [2, 3]
    logs = [
        e.message
        for e in instance.all_logs(resumed.run_id)
        if e.message and "step 6/6" in e.message
    ]
    assert logs and "it/s" in logs[0] and "eta" in logs[0]
    assert instance.get_latest_materialization_event(AssetKey("trained_lora")) is not None


def test_a_cancelled_child_saves_its_step_and_resumes(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    config = resume_config(tiny_sd, tmp_path / "state", epochs=3)
    job_file = tmp_path / "job.json"
    output = tmp_path / "lora.safetensors"
    job_file.write_text(json.dumps(TrainingJob(config, examples, output).to_dict()))
    command = [sys.executable, "-m", "lora_pipeline.training.pipes_entry", "--job", str(job_file)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("step 1/6"):
            # Batch work: the child lowered its CPU priority (training_nice, default 10).
            ours = os.getpriority(os.PRIO_PROCESS, 0)
            assert os.getpriority(os.PRIO_PROCESS, child.pid) == min(ours + 10, 19)
            child.send_signal(signal.SIGINT)  # what Dagster sends when a run is cancelled
            break
    rest = child.stdout.read()
    assert child.wait(timeout=120) == 130
    interrupted = json.loads(next(x for x in rest.splitlines() if '"interrupted"' in x))
    assert 1 <= interrupted["step"] < 6 and Path(interrupted["state"]).is_dir()
    assert not output.exists()

    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    result = json.loads(next(x for x in finished.stdout.splitlines() if '"result"' in x))["result"]
    assert result["resumed_from_step"] == interrupted["step"]
    assert result["history"] == list(range(1, 7))
    assert output.is_file()


def test_a_checkpoint_that_cannot_load_fails_the_asset_with_its_one_line_reason(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    """Not "the training process crashed (exit code 1)": the loader's line reaches Dagster."""
    from safetensors.torch import save_file

    broken = tmp_path / "lora-not-checkpoint.safetensors"
    save_file({"lora_unet_x.lora_down.weight": __import__("torch").zeros(1)}, broken)
    config = resume_config(tiny_sd, tmp_path / "state")
    from dataclasses import replace

    job = TrainingJob(replace(config, base_model=str(broken)), examples, tmp_path / "l.safetensors")
    failed, _ = _materialize(DagsterInstance.ephemeral(), job, None)
    failure = next(e for e in failed.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    message = str(failure.event_specific_data.error.message)
    assert f"training failed: {broken} has no UNet weights (model.diffusion_model.*)" in message
    assert "exit code" not in message


def test_an_unexpected_error_in_the_child_is_reported_by_its_first_line(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path, monkeypatch
) -> None:  # noqa: ANN001
    from lora_pipeline.training import pipes_entry

    def explode(job: TrainingJob, reporter: object) -> TrainingResult:
        raise RuntimeError("Error(s) in loading state_dict for CLIPTextModel:\n\tMissing key(s)")

    monkeypatch.setattr(pipes_entry, "run_job", explode)
    job = TrainingJob(resume_config(tiny_sd, tmp_path), examples, tmp_path / "l.safetensors")
    reports: list[dict] = []
    reporter = pipes_entry.ChildReporter(None, job, pipes_entry.StopFlag())
    monkeypatch.setattr(reporter, "message", reports.append)
    assert pipes_entry.train(job, reporter) == pipes_entry.EXIT_FAILED
    assert reports == [
        {
            "kind": "failure",
            "message": "RuntimeError: Error(s) in loading state_dict for CLIPTextModel:",
        }
    ]
