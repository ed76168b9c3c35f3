"""Interactive work goes first under the real daemon: with trainings queued behind a busy GPU,
a requested image is started by the run queue before the last queued training (a run slot is
kept free of batch runs) and gets the GPU before every training waiting for it.

The test itself holds the GPU (as another GPU job would) while the runs queue up, then lets it
go. The waits are deadlines for the daemon, not timed assertions.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from dagster import DagsterRunStatus

from lora_pipeline.config import Settings
from lora_pipeline.defs.instance import open_instance
from lora_pipeline.model_runtime import ModelRuntime
from lora_pipeline.registry import queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import GenerationJob
from lora_pipeline_tests.defs.conftest import cli, wait_for

pytestmark = pytest.mark.slow
TRAININGS = 4  # one more than the batch runs the run queue lets in at once (dagster.yaml)


@pytest.fixture
def daemon_settings() -> dict[str, str]:
    return {"LORA_PIPELINE_TRAINING_SETTLE_S": "86400"}  # only the trainings queued here


def run_statuses(settings: Settings, run_ids: Iterable[str]) -> dict[str, DagsterRunStatus]:
    with open_instance(settings.dagster_home) as instance:
        return {run_id: instance.get_run_by_id(run_id).status for run_id in run_ids}


def got_the_gpu_at(settings: Settings, run_id: str) -> float | None:
    """When a run's GPU step took the device after waiting for it (its "got the GPU" line)."""
    with open_instance(settings.dagster_home) as instance:
        logs = instance.all_logs(run_id)
    times = [e.timestamp for e in logs if "got the GPU after" in (e.user_message or "")]
    return min(times) if times else None


def test_a_requested_image_goes_before_queued_trainings(daemon, capsys) -> None:
    settings = Settings.current()
    registry = Registry(settings.database_url)
    cli("generate", "aiko", "--count", "10", "--now")
    with registry.session(readonly=True) as session:
        ids = [i.id for i in queries.pending_images(session, character_slug="aiko")]
    cli("review", "approve", *map(str, ids))

    with ModelRuntime(settings).gpu_lock().hold("the test, as another GPU job"):
        capsys.readouterr()
        trainings = []
        for _ in range(TRAININGS):
            cli("train", "aiko", "--max-steps", "1", "--no-samples")
            trainings.append(capsys.readouterr().out.split("queued as run ")[1].split(":")[0])
        wait_for(
            f"{TRAININGS - 1} trainings started",
            lambda: (
                list(run_statuses(settings, trainings).values()).count(DagsterRunStatus.STARTED)
                == TRAININGS - 1
                or None
            ),
            daemon,
        )
        cli("generate", "aiko")
        lock = ModelRuntime(settings).gpu_lock()
        wait_for("the image's run waiting for the GPU", lock.interactive_waiting, daemon)
        # The run queue let the image's run past the training still queued.
        assert DagsterRunStatus.QUEUED in run_statuses(settings, trainings).values()

    def image_run() -> str | None:
        """The run of the requested image, once the image is drawn."""
        with registry.session(readonly=True) as session:
            images = queries.pending_images(session, character_slug="aiko")
            if not images:
                return None
            return session.get(GenerationJob, images[0].generation_job_id).run_id

    run_id = wait_for("the requested image", image_run, daemon)
    drawn = got_the_gpu_at(settings, run_id)
    assert drawn is not None, "the image's run never waited for the GPU"
    first = wait_for(
        "a training taking the GPU",
        lambda: min(filter(None, (got_the_gpu_at(settings, r) for r in trainings)), default=None),
        daemon,
    )
    assert drawn < first, "a training took the GPU before the requested image"
    registry.dispose()
