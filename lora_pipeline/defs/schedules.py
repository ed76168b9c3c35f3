"""Schedules: sweep generation jobs and ingests whose run ended or died, and stuck ones, and
check every dataset version nightly."""

from datetime import timedelta

from dagster import (
    AssetKey,
    AssetObservation,
    DagsterInstance,
    DefaultScheduleStatus,
    Failure,
    MetadataValue,
    OpExecutionContext,
    ScheduleDefinition,
    job,
    op,
)

from lora_pipeline.dataset.quality import files_match_manifest
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource
from lora_pipeline.generation.service import clear_stuck_jobs
from lora_pipeline.media.claims import is_claimed
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.commands.sources import fail_dead_sources
from lora_pipeline.registry.models import Source

STUCK_AFTER = timedelta(minutes=30)


@op
def sweep_stuck_generation_jobs(
    context: OpExecutionContext, registry: RegistryResource, models: ModelsResource
) -> None:
    """Running generation jobs whose Dagster run has ended are marked failed at once; jobs
    pending or running for over 30 minutes too (a run whose process died without Dagster
    noticing), and those sent to ComfyUI are stopped there."""
    with registry.get().session() as session:
        ended = commands.fail_jobs_of_ended_runs(
            session, lambda run_id: ended_run(context.instance, run_id)
        )
    context.log.info(f"marked {len(ended)} generation jobs whose run ended failed: {ended}")
    client = models.runtime().comfyui_client()
    cleared = clear_stuck_jobs(registry.get(), STUCK_AFTER, client.cancel if client else None)
    context.log.info(f"marked {len(cleared.failed)} stuck generation jobs failed: {cleared.failed}")
    if cleared.cancelled or cleared.cancel_errors:
        context.log.info(f"ComfyUI: {cleared.cancelled}; could not stop: {cleared.cancel_errors}")


def ended_run(instance: DagsterInstance, run_id: str) -> str | None:
    """How a run ended ("failure", "canceled", ...); None while it is alive or unknown here."""
    run = instance.get_run_by_id(run_id)
    return run.status.value.lower() if run is not None and run.is_finished else None


def dead_ingest_reason(instance: DagsterInstance, run_id: str | None) -> str:
    """Why a source left `running` is failed: its run ended, or its process died."""
    run = instance.get_run_by_id(run_id) if run_id else None
    if run is not None and run.is_finished:
        return f"its ingest run {run_id[:8]} ended ({run.status.value.lower()}) mid-way"
    named = f"run {run_id[:8]}" if run_id else "no Dagster run"
    return f"the process ingesting it ({named}) died mid-way (killed or crashed); retry it"


@op
def fail_dead_ingests(
    context: OpExecutionContext, registry: RegistryResource, data_root: DataRootResource
) -> None:
    """Sources still `running` that no live process is ingesting (their process holds no lock:
    killed, crashed, out of memory) are marked failed with the reason, to be retried."""
    root = data_root.get()

    def alive(source: Source) -> bool:
        return is_claimed(root, source.id)

    def reason(source: Source) -> str:
        return dead_ingest_reason(context.instance, source.run_id)

    with registry.get().session() as session:
        failed = fail_dead_sources(session, alive, reason)
    context.log.info(f"marked {len(failed)} ingests whose run died failed: {failed}")


@op
def check_dataset_versions(
    context: OpExecutionContext, registry: RegistryResource, data_root: DataRootResource
) -> None:
    """Every character's latest dataset version still matches its manifest on disk."""
    root, broken = data_root.get(), {}
    with registry.get().session() as session:
        for character in queries.list_characters(session):
            version = queries.latest_dataset_version(session, character.id)
            if version is None:
                continue
            gate = files_match_manifest(root, version.manifest)
            context.log_event(
                AssetObservation(
                    asset_key=AssetKey("approved_dataset"),
                    partition=character.slug,
                    metadata={
                        "version_hash": version.version_hash,
                        "intact": gate.passed,
                        "check": gate.description,
                        "problems": MetadataValue.json(gate.problems),
                    },
                )
            )
            if not gate.passed:
                broken[character.slug] = gate.problems
    if broken:
        raise Failure(f"dataset versions changed on disk: {sorted(broken)}", metadata=broken)


@job(
    description="Mark generation jobs whose run ended or stuck for 30 minutes, and ingests "
    "whose run died, failed."
)
def sweep_stuck_jobs_job() -> None:
    sweep_stuck_generation_jobs()
    fail_dead_ingests()


@job(description="Verify every character's latest dataset version against its manifest.")
def dataset_quality_job() -> None:
    check_dataset_versions()


# Named as the README and the UI list them (unnamed, Dagster would call it "<job>_schedule").
stuck_jobs_schedule = ScheduleDefinition(
    name="stuck_jobs_schedule",
    job=sweep_stuck_jobs_job,
    cron_schedule="*/10 * * * *",
    default_status=DefaultScheduleStatus.RUNNING,
)

nightly_quality_schedule = ScheduleDefinition(
    name="nightly_quality_schedule",
    job=dataset_quality_job,
    cron_schedule="0 3 * * *",
    default_status=DefaultScheduleStatus.RUNNING,
)
