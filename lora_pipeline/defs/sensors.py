"""Sensors: the registry's events become runs (DESIGN §3).

Every run request carries a run_key built from the event it answers (source id, last
rejection id, dataset hash). Dagster never launches two runs with one run_key of a sensor, so
a tick that fails half-way and is retried cannot start a second regeneration or training.
"""

import math
from collections import defaultdict
from datetime import UTC, datetime

from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from sqlalchemy.orm import Session

from lora_pipeline.config import Settings
from lora_pipeline.dataset import approved_sets
from lora_pipeline.dataset.approved_sets import ApprovedSet, Tracker
from lora_pipeline.dataset.quality import MIN_APPROVED_IMAGES
from lora_pipeline.defs.jobs import ingest_job, regenerate_job, training_job
from lora_pipeline.defs.partitions import CHARACTER_PARTITIONS_NAME, character_partitions
from lora_pipeline.defs.resources import RegistryResource
from lora_pipeline.generation.service import is_request
from lora_pipeline.media.comfyui_scan import register_new_outputs
from lora_pipeline.registry import queries
from lora_pipeline.registry.models import Character, Source

RUNNING = DefaultSensorStatus.RUNNING


def _missing_partitions(context: SensorEvaluationContext, slugs: set[str]) -> list[str]:
    # One lookup per key this tick names, not a read of every partition the instance has.
    instance = context.instance
    return sorted(
        s for s in slugs if not instance.has_dynamic_partition(CHARACTER_PARTITIONS_NAME, s)
    )


def _result(
    context: SensorEvaluationContext, runs: list[RunRequest], cursor: str | None, skip: str
) -> SensorResult:
    """Run requests, plus the partitions they need that do not exist yet."""
    keys = {r.partition_key for r in runs if r.partition_key}
    new = _missing_partitions(context, keys)
    return SensorResult(
        run_requests=runs,
        cursor=cursor,
        dynamic_partitions_requests=[character_partitions.build_add_request(new)] if new else [],
        skip_reason=None if runs else SkipReason(skip),
    )


# Characters one tick adds partitions for; a first tick on a large registry carries on.
CHARACTERS_PER_TICK = 1000


@sensor(minimum_interval_seconds=30, default_status=RUNNING)
def character_partitions_sensor(
    context: SensorEvaluationContext, registry: RegistryResource
) -> SensorResult:
    """Adds a `character` partition for every character in the registry (cursor: last
    character id seen; at most CHARACTERS_PER_TICK a tick)."""
    last_id = int(context.cursor or 0)
    with registry.get().session(readonly=True) as session:
        characters = queries.characters_after(session, last_id, CHARACTERS_PER_TICK)
    cursor = str(max([last_id] + [character_id for character_id, _ in characters]))
    new = _missing_partitions(context, {slug for _, slug in characters})
    if not new:
        return SensorResult(
            cursor=cursor, skip_reason=SkipReason("every character has a partition")
        )
    context.log.info(f"adding partitions {new}")
    return SensorResult(
        cursor=cursor, dynamic_partitions_requests=[character_partitions.build_add_request(new)]
    )


# Sources one tick of an ingest sensor turns into runs (and retried sources it looks at):
# a backlog is worked through over several ticks, each of bounded cost.
SOURCES_PER_TICK = 1000


def _partitions(session: Session, sources: list[Source]) -> dict[int, str | None]:
    """Source id -> the partition that ingests it: one lookup per character or project."""
    by_owner: dict[tuple, str | None] = {}
    found = {}
    for source in sources:
        owner = (source.character_id, source.project_id if source.character_id is None else None)
        if owner not in by_owner:
            by_owner[owner] = queries.ingest_partition(session, source)
        found[source.id] = by_owner[owner]
    return found


@sensor(job=ingest_job, minimum_interval_seconds=30, default_status=RUNNING)
def ingest_sensor(context: SensorEvaluationContext, registry: RegistryResource) -> SensorResult:
    """New ingest requests → one ingest run per source (cursor: last source id); a failed
    source retried (`ingest retry`, the review app's button) → a new run of it. At most
    SOURCES_PER_TICK new sources a tick; the rest carry on in the next."""
    last_id = int(context.cursor or 0)
    with registry.get().session(readonly=True) as session:
        sources = queries.ingest_requests_after(session, last_id, False, SOURCES_PER_TICK)
        retried = queries.retried_sources(session, last_id, SOURCES_PER_TICK)
        partitions = _partitions(session, sources + retried)
        runs = [_ingest_request(s, partitions[s.id], context) for s in sources + retried]
        cursor = str(max([last_id] + [s.id for s in sources]))
    return _result(context, [r for r in runs if r is not None], cursor, "no new ingest requests")


def _ingest_request(
    source: Source, slug: str | None, context: SensorEvaluationContext
) -> RunRequest | None:
    if slug is None:
        context.log.warning(f"source {source.id}: its project has no character yet")
        return None
    return RunRequest(
        run_key=_ingest_run_key(source),
        partition_key=slug,
        run_config={"ops": {"ingested_frames": {"config": {"source_ids": [source.id]}}}},
        tags={"lora_pipeline/source_id": str(source.id)},
    )


def _ingest_run_key(source: Source) -> str:
    """One run per request, and one per retry (keyed by when the failed run ended)."""
    if source.processed_at is None:
        return f"ingest-{source.id}"
    return f"ingest-{source.id}-retry-{source.processed_at:%Y%m%dT%H%M%S%f}"


@sensor(job=ingest_job, minimum_interval_seconds=30, default_status=RUNNING)
def comfyui_output_sensor(
    context: SensorEvaluationContext, registry: RegistryResource
) -> SensorResult:
    """New files in the ComfyUI output folder (LORA_PIPELINE_COMFYUI_OUTPUT_DIR) → ingest
    requests, each file once even across restarts → one ingest run per character with the
    new ones (cursor: last source id requested; at most SOURCES_PER_TICK a tick)."""
    settings = Settings.current()
    folder = settings.comfyui_output_dir
    if folder is None:
        return SensorResult(
            skip_reason=SkipReason("no ComfyUI output folder: set LORA_PIPELINE_COMFYUI_OUTPUT_DIR")
        )
    if not folder.is_dir():
        return SensorResult(skip_reason=SkipReason(f"ComfyUI output folder {folder} is missing"))
    reg = registry.get()
    register_new_outputs(reg, folder, settings.comfyui_project, context.log.info)
    last_id = int(context.cursor or 0)
    by_partition: dict[str, list[int]] = defaultdict(list)
    with reg.session(readonly=True) as session:
        sources = queries.ingest_requests_after(session, last_id, True, SOURCES_PER_TICK)
        partitions = _partitions(session, sources)
        cursor = str(max([last_id] + [s.id for s in sources]))
        source_ids = [s.id for s in sources]
    for source_id in source_ids:
        slug = partitions[source_id]
        if slug is None:
            context.log.warning(f"source {source_id}: its project has no character yet")
            continue
        by_partition[slug].append(source_id)
    # A retried tick groups the same sources the same way, so its run_keys repeat; and a
    # source already ingested is skipped by the run, so an overlap costs nothing.
    runs = [
        RunRequest(
            run_key=f"comfyui-{slug}-{ids[0]}-{ids[-1]}",
            partition_key=slug,
            run_config={"ops": {"ingested_frames": {"config": {"source_ids": ids}}}},
            tags={"lora_pipeline/source_ids": ",".join(map(str, ids))},
        )
        for slug, ids in sorted(by_partition.items())
    ]
    return _result(context, runs, cursor, "no new ComfyUI outputs")


def _generation_runs(
    by_character: dict[str, list[int]], key: str, field: str, config: dict | None = None
) -> list[RunRequest]:
    """One generated_images run per character carrying its event ids in `field`; the run_key
    ends with the newest id, so a retried tick requests the same runs."""
    return [
        RunRequest(
            run_key=f"{key}-{slug}-{max(ids)}",
            partition_key=slug,
            run_config={"ops": {"generated_images": {"config": {**(config or {}), field: ids}}}},
            tags={f"lora_pipeline/{field}": ",".join(map(str, ids))},
        )
        for slug, ids in sorted(by_character.items())
    ]


# Rejections one tick turns into runs: a burst (a reviewer rejecting a whole page, a backlog
# after downtime) is worked through over several ticks, each of bounded cost.
REJECTIONS_PER_TICK = 1000


# Every 10 s, as the generation requests: a reviewer waits for the answer to a rejection, and
# the tick is one query on the feedback primary key, joined to the characters' slugs.
@sensor(job=regenerate_job, minimum_interval_seconds=10, default_status=RUNNING)
def rejection_sensor(context: SensorEvaluationContext, registry: RegistryResource) -> SensorResult:
    """New rejections → one regeneration run per character, carrying the rejection ids, whose
    categories become negative prompt terms (cursor: last feedback id). At most
    REJECTIONS_PER_TICK a tick; the rest carry on in the next."""
    last_id = int(context.cursor or 0)
    by_character: dict[str, list[int]] = defaultdict(list)
    with registry.get().session(readonly=True) as session:
        rejections = queries.rejections_after(session, last_id, REJECTIONS_PER_TICK)
    for feedback_id, slug in rejections:
        by_character[slug].append(feedback_id)
    runs = _generation_runs(by_character, "regenerate", "feedback_ids", {"count": 1})
    cursor = str(max([last_id] + [feedback_id for feedback_id, _ in rejections]))
    return _result(context, runs, cursor, "no new rejections")


# Pending jobs one tick of the generation-request sensor reads.
JOBS_PER_TICK = 1000


@sensor(job=regenerate_job, minimum_interval_seconds=10, default_status=RUNNING)
def generation_request_sensor(
    context: SensorEvaluationContext, registry: RegistryResource
) -> SensorResult:
    """Generation requests from the review app (pending jobs) → one run per character that
    executes exactly those jobs (cursor: last pending job read; the generation stage's own
    jobs are passed over, they never become requests). At most JOBS_PER_TICK a tick."""
    last_id = int(context.cursor or 0)
    by_character: dict[str, list[int]] = defaultdict(list)
    with registry.get().session(readonly=True) as session:
        jobs = queries.pending_jobs_after(session, last_id, JOBS_PER_TICK)
        slugs: dict[int, str] = {}  # one lookup per character, not per job
        for job in filter(is_request, jobs):
            if job.character_id not in slugs:
                slugs[job.character_id] = session.get(Character, job.character_id).slug
            by_character[slugs[job.character_id]].append(job.id)
        cursor = str(max([last_id] + [job.id for job in jobs]))
    runs = _generation_runs(by_character, "generate", "job_ids")
    return _result(context, runs, cursor, "no new generation requests")


# Training runs that hold a character's place: waiting in the queue, or on their way to the GPU.
QUEUED_STATES = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED]
ACTIVE_STATES = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
SENSOR_TAG = "dagster/sensor_name"
VERSION_TAG = "lora_pipeline/dataset_version"


# The training sensor's view of a character: its approved set (lora_pipeline.dataset.approved_sets).
TrainingCandidate = ApprovedSet


def _waiting_reason(candidate: TrainingCandidate, settle_s: float, now: datetime) -> str | None:
    """Why the character's approved set is not trained yet by a new run; None: train it."""
    if candidate.approved < MIN_APPROVED_IMAGES:
        return f"{candidate.approved}/{MIN_APPROVED_IMAGES} approved"
    if candidate.trained:
        return f"version {candidate.version[:12]} trained"
    if candidate.last_review is not None:
        left = settle_s - (now - candidate.last_review).total_seconds()
        if left > 0:
            return f"settling, {math.ceil(left / 60)} min left"
    return None


def _training_runs(instance: DagsterInstance, slug: str, states: list) -> list[DagsterRun]:
    runs_filter = RunsFilter(
        job_name=training_job.name, statuses=states, tags={"dagster/partition": slug}
    )
    return list(instance.get_runs(filters=runs_filter))


def _supersede(context: SensorEvaluationContext, run: DagsterRun, version: str) -> None:
    """Cancel a training this sensor queued for an approved set that has changed since."""
    reason = f"superseded by dataset version {version[:12]}: the approved set changed"
    context.instance.add_run_tags(
        run.run_id, {"lora_pipeline/superseded_by": version, "lora_pipeline/cancel_reason": reason}
    )
    context.instance.report_run_canceled(run, message=reason)
    context.log.info(f"cancelled queued training run {run.run_id[:8]}: {reason}")


def _place_in_queue(context: SensorEvaluationContext, candidate: TrainingCandidate) -> str | None:
    """At most one queued and one running training per character: why this version needs no
    new run (it is queued or training already, or a run queued by hand goes first); a queued
    run of an older set that this sensor started is cancelled to make room."""
    slug, version = candidate.slug, candidate.version
    for run in _training_runs(context.instance, slug, ACTIVE_STATES):
        if run.tags.get(VERSION_TAG) == version:
            return f"version {version[:12]} is training (run {run.run_id[:8]})"
    for run in _training_runs(context.instance, slug, QUEUED_STATES):
        if run.tags.get(VERSION_TAG) == version:
            return f"version {version[:12]} is queued (run {run.run_id[:8]})"
        if run.status != DagsterRunStatus.QUEUED or run.tags.get(SENSOR_TAG) != "training_sensor":
            return f"run {run.run_id[:8]}, queued by hand, trains the newest set first"
        _supersede(context, run, version)
    return None


def _training_request(candidate: TrainingCandidate) -> RunRequest:
    # The key names the set and the last decision on it: a retried tick repeats it, and a set
    # that comes back after a superseded run gets a run of its own.
    stamp = f"{candidate.last_review:%Y%m%dT%H%M%S%f}" if candidate.last_review else "never"
    return RunRequest(
        run_key=f"train-{candidate.slug}-{candidate.version}-{stamp}",
        partition_key=candidate.slug,
        tags={VERSION_TAG: candidate.version},
    )


@sensor(job=training_job, minimum_interval_seconds=60, default_status=RUNNING)
def training_sensor(context: SensorEvaluationContext, registry: RegistryResource) -> SensorResult:
    """A character with ≥ 10 approved images, whose approved set was never trained and has not
    changed for `training_settle_s` → one training run (tagged with the dataset version).
    A newer set supersedes this sensor's queued run of the character; never more than one
    queued and one running training per character. The skip reason says why each waits.
    Cursor: the newest decision seen and each character's set (see `approved_sets`)."""
    settle_s = Settings.current().training_settle_s
    now = datetime.now(UTC).replace(tzinfo=None)
    runs, waiting = [], []
    # The cursor carries every character's set: only the decisions since it are read.
    with registry.get().session(readonly=True) as session:
        tracker, candidates = approved_sets.advance(session, Tracker.from_cursor(context.cursor))
    for candidate in candidates:
        reason = _waiting_reason(candidate, settle_s, now) or _place_in_queue(context, candidate)
        if reason is None:
            runs.append(_training_request(candidate))
        else:
            waiting.append(f"{candidate.slug}: {reason}")
    skip = "; ".join(waiting) or "no characters"
    if runs and waiting:
        context.log.info(f"waiting: {skip}")
    return _result(context, runs, tracker.to_cursor(), skip)
