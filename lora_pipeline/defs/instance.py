"""Set up a Dagster home, launch materialisations from the CLI and the demo, queue runs for
the daemon and summarise the runs for the CLI."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunsFilter,
    materialize,
)

from lora_pipeline.config import export_dagster_home
from lora_pipeline.defs.partitions import CHARACTER_PARTITIONS_NAME, GPU_POOLS

INSTANCE_FILES = resources.files("lora_pipeline") / "instance"


def prepare_dagster_home(home: Path, postgres: bool = False) -> Path:
    """Write dagster.yaml (unless the user has one) and limit each GPU pool to one slot."""
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists():
        name = "dagster-postgres.yaml" if postgres else "dagster.yaml"
        with resources.as_file(INSTANCE_FILES / name) as source:
            shutil.copyfile(source, target)
    with open_instance(home) as instance:
        for pool in GPU_POOLS:
            instance.event_log_storage.set_concurrency_slots(pool, 1)
    return target


def open_instance(home: Path) -> DagsterInstance:
    # DagsterInstance.get() reads DAGSTER_HOME; set it so child processes agree.
    export_dagster_home(home)
    return DagsterInstance.get()


def ensure_partitions(instance: DagsterInstance, slugs: Sequence[str]) -> None:
    existing = set(instance.get_dynamic_partitions(CHARACTER_PARTITIONS_NAME))
    new = [s for s in slugs if s not in existing]
    if new:
        instance.add_dynamic_partitions(CHARACTER_PARTITIONS_NAME, new)


def materialize_partition(
    instance: DagsterInstance,
    partition: str,
    selection: Sequence[str],
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
    console_level: str = "WARNING",
) -> bool:
    """Materialise the selected assets of the code location for one character.

    The console shows warnings and errors only; the run's full log goes to the instance's event
    log, where the Dagster UI shows it.
    """
    from lora_pipeline.definitions import ASSETS, build_resources

    ensure_partitions(instance, [partition])
    result = materialize(
        ASSETS,
        selection=list(selection),
        partition_key=partition,
        instance=instance,
        resources=build_resources(),
        run_config={
            **(run_config or {}),
            "loggers": {"console": {"config": {"log_level": console_level}}},
        },
        tags=tags,
        raise_on_error=False,
    )
    return result.success


DEFINITIONS_MODULE = "lora_pipeline.definitions"


def submit_job_run(
    instance: DagsterInstance,
    job_name: str,
    partition: str,
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Put a run of the code location's job for one character in the instance's run queue
    (what `dagster job launch` does): the daemon starts it under the pools, never this
    process. Returns its run id."""
    import json

    from dagster._cli.job import execute_launch_command
    from dagster_shared.cli import WorkspaceOpts

    ensure_partitions(instance, [partition])
    run = execute_launch_command(
        instance=instance,
        workspace_opts=WorkspaceOpts(module_name=(DEFINITIONS_MODULE,)),
        config_json=json.dumps(run_config or {}),
        tags=json.dumps({**(tags or {}), "dagster/partition": partition}),
        job_name=job_name,
    )
    return run.run_id


@dataclass(frozen=True)
class RunSummary:
    """A run as `lora-pipeline runs` shows it."""

    run_id: str
    job: str
    character: str | None
    status: str
    started_by: str
    created: datetime
    # The step in progress (or the last one), and the training's last epoch report.
    step: str | None
    progress: str | None

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "created": self.created.isoformat()}


# Runs not finished yet: what the review app shows as queued or running.
UNFINISHED = (
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
)


def run_summaries(
    instance: DagsterInstance,
    character: str | None = None,
    limit: int = 20,
    unfinished_only: bool = False,
) -> list[RunSummary]:
    """The newest runs of the code location, optionally of one character, optionally only
    those not finished (the review app polls these)."""
    tags = {"dagster/partition": character} if character else {}
    statuses = list(UNFINISHED) if unfinished_only else None
    records = instance.get_run_records(
        filters=RunsFilter(tags=tags, statuses=statuses), limit=limit
    )
    return [_summary(instance, record.dagster_run, record.create_timestamp) for record in records]


def _summary(instance: DagsterInstance, run: DagsterRun, created: datetime) -> RunSummary:
    tags = run.tags
    return RunSummary(
        run_id=run.run_id,
        job=run.job_name,
        character=tags.get("dagster/partition"),
        status=run.status.value.lower(),
        started_by=_started_by(tags),
        created=created,
        step=_current_step(instance, run),
        progress=_training_progress(instance, run),
    )


def _started_by(tags: Mapping[str, str]) -> str:
    if "lora_pipeline/started_by" in tags:
        return tags["lora_pipeline/started_by"]
    for kind in ("sensor", "schedule"):
        if f"dagster/{kind}_name" in tags:
            return f"{kind} {tags[f'dagster/{kind}_name']}"
    return "launchpad"


def _current_step(instance: DagsterInstance, run: DagsterRun) -> str | None:
    if run.status in (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED):
        return None
    stats = instance.get_run_step_stats(run.run_id)
    running = [s.step_key for s in stats if s.end_time is None]
    done = [s.step_key for s in stats if s.end_time is not None]
    return (running or done or [None])[-1]


def _training_progress(instance: DagsterInstance, run: DagsterRun) -> str | None:
    """'epoch 2/10, step 120/600, loss 0.1234' from the run's last epoch observation."""
    records = instance.get_records_for_run(
        run.run_id, of_type=DagsterEventType.ASSET_OBSERVATION, ascending=False, limit=1
    ).records
    if not records:
        return None
    observation = records[0].event_log_entry.dagster_event.event_specific_data.asset_observation
    values = {key: value.value for key, value in observation.metadata.items()}
    if "epoch" not in values:
        return None
    return (
        f"epoch {values['epoch']}/{values.get('epochs', '?')}, "
        f"step {values.get('step', '?')}/{values.get('total_steps', '?')}, "
        f"loss {values.get('mean_loss', '?')}"
    )
