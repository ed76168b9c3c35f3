"""A generation job whose Dagster run ended without finishing it (the run failed, was cancelled,
its worker was lost) is marked failed by the stuck-jobs schedule at its next tick, with a
one-line reason, instead of staying `running` until the 30-minute timeout; a job whose run is
still alive, or that names no run, is left alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance, job, op

from lora_pipeline import actions
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource
from lora_pipeline.defs.schedules import sweep_stuck_jobs_job
from lora_pipeline.registry import commands
from lora_pipeline.registry.models import GenerationJob
from lora_pipeline_tests.media.conftest import demo_registry


@op
def crashes() -> None:
    raise RuntimeError("the worker was lost")


@job
def crashing_job() -> None:
    crashes()


def test_a_job_whose_run_ended_is_failed_at_the_next_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(tmp_path / "home"))
    for name in ("COMFYUI_URL", "DATABASE_URL", "DATA_ROOT"):
        monkeypatch.delenv(f"LORA_PIPELINE_{name}", raising=False)
    registry = demo_registry(tmp_path)
    dead, alive, unnamed, done = actions.request_generation(
        registry, "aiko", comfyui=False, count=4
    )
    resources = {
        "registry": RegistryResource(database_url=f"sqlite:///{tmp_path / 'registry.db'}"),
        "data_root": DataRootResource(path=str(tmp_path / "data")),
        "models": ModelsResource(),
    }
    with DagsterInstance.ephemeral() as instance:
        ended = crashing_job.execute_in_process(instance=instance, raise_on_error=False)
        assert not ended.success
        living = instance.create_run_for_job(crashing_job)  # not started: still alive
        with registry.session() as session:
            commands.mark_job(session, dead, "running", run_id=ended.run_id)
            commands.mark_job(session, done, "running", run_id=ended.run_id)
            commands.mark_job(session, done, "completed")
            commands.mark_job(session, alive, "running", run_id=living.run_id)
            commands.mark_job(session, unnamed, "running")
        assert sweep_stuck_jobs_job.execute_in_process(
            resources=resources, instance=instance
        ).success
    with registry.session() as session:
        rows = {j.id: (j.status, j.error) for j in session.query(GenerationJob)}
    registry.dispose()
    status, error = rows[dead]
    assert status == "failed" and "\n" not in error
    assert error == (
        f"its run {ended.run_id[:8]} ended (failure) before the job finished; request it again"
    )
    assert rows[alive] == ("running", None)
    assert rows[unnamed] == ("running", None)  # no run to ask: the 30-minute timeout's case
    assert rows[done] == ("completed", None)  # finished before its run ended: kept
