"""Commands on generation jobs: creating them and moving them along their states."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from lora_pipeline.generation_settings import SETTING_NAMES, check_settings
from lora_pipeline.registry.commands._rows import _get, _reload, _updated_rows
from lora_pipeline.registry.commands._validate import (
    _id,
    _json,
    _naive_utc,
    _optional_text,
    _relative_path,
    _setting,
    _text,
)
from lora_pipeline.registry.errors import ConflictError, InvalidInputError, NotFoundError
from lora_pipeline.registry.models import Character, Feedback, GenerationJob, utcnow

# Allowed job transitions: new status -> the statuses it may come from.
_JOB_TRANSITIONS = {
    "running": ("pending",),
    "completed": ("pending", "running"),
    "failed": ("pending", "running"),
    "duplicate": ("running",),
}


def create_generation_job(
    session: Session,
    character_id: int,
    prompt: str,
    negative_prompt: str,
    seed: int,
    params: dict[str, Any],
    backend: str = "diffusers",
    feedback_ids: Sequence[int] = (),
    kind: str = "image",
    run_id: str | None = None,
) -> GenerationJob:
    character = _get(session, Character, character_id, "character")
    ids = [_id(i, "feedback") for i in dict.fromkeys(feedback_ids)]
    if ids:
        rows = session.execute(
            select(Feedback.id, Feedback.character_id).where(Feedback.id.in_(ids))
        ).tuples()
        owners = {feedback_id: owner for feedback_id, owner in rows}
        for feedback_id in ids:
            if feedback_id not in owners:
                raise NotFoundError(f"unknown feedback {feedback_id}")
            if owners[feedback_id] != character.id:
                raise InvalidInputError(
                    f"feedback {feedback_id} is about another character than {character.slug!r}"
                )
    job = GenerationJob(
        character_id=character.id,
        kind=_text(kind, "job kind", required=True, max_length=16),
        status="pending",
        backend=_text(backend, "backend", required=True, max_length=32),
        prompt=_text(prompt, "prompt", required=True),
        negative_prompt=_text(negative_prompt, "negative prompt"),
        seed=_setting(seed, "seed", "seed"),
        params=_job_params(params),
        feedback_ids=ids,
        run_id=_optional_text(run_id, "run id", max_length=64),
    )
    session.add(job)
    session.flush()
    return job


def _job_params(params: object) -> dict[str, Any]:
    """A job's parameters; the generation settings among them within the one set of limits."""
    checked = _json(params, "params", dict)
    settings = {k: v for k, v in checked.items() if k in SETTING_NAMES and v is not None}
    return checked | check_settings(settings, error=InvalidInputError)


def mark_job(
    session: Session,
    job_id: int,
    status: str,
    error: str | None = None,
    comfyui_prompt_id: str | None = None,
    backend: str | None = None,
    run_id: str | None = None,
    duplicate_of: int | None = None,
) -> GenerationJob:
    """Move a job along pending -> running -> completed/failed/duplicate (ConflictError
    otherwise); `backend` records what ran it when that differs from what was requested,
    `run_id` the Dagster run that ran it, `duplicate_of` the image its output copied."""
    job_id = _id(job_id, "generation job")
    if status not in _JOB_TRANSITIONS:
        raise InvalidInputError(
            f"cannot mark a generation job {status!r}: use one of {', '.join(_JOB_TRANSITIONS)}"
        )
    now = utcnow()
    values: dict[str, Any] = {"status": status}
    if status == "running":
        values["started_at"] = now
    else:
        values["started_at"] = func.coalesce(GenerationJob.started_at, now)
        values["finished_at"] = now
    if error is not None:
        values["error"] = _text(error, "error")
    if comfyui_prompt_id is not None:
        values["comfyui_prompt_id"] = _text(comfyui_prompt_id, "ComfyUI prompt id", max_length=64)
    if backend is not None:
        values["backend"] = _text(backend, "backend", required=True, max_length=32)
    if run_id is not None:
        values["run_id"] = _text(run_id, "run id", required=True, max_length=64)
    if duplicate_of is not None:
        values["duplicate_of_image_id"] = _id(duplicate_of, "image")
    statement = (
        update(GenerationJob)
        .where(GenerationJob.id == job_id, GenerationJob.status.in_(_JOB_TRANSITIONS[status]))
        .values(**values)
    )
    if _updated_rows(session, statement) == 1:
        return _reload(session, GenerationJob, job_id)
    current = session.scalar(select(GenerationJob.status).where(GenerationJob.id == job_id))
    if current is None:
        raise NotFoundError(f"unknown generation job {job_id}")
    raise ConflictError(f"generation job {job_id} is {current}, it cannot become {status}")


def reseed_job(session: Session, job_id: int, seed: int, params: dict[str, Any]) -> GenerationJob:
    """A running job retried with another seed (its first output copied an existing image):
    the row keeps the seed and parameters of what it finally draws."""
    job = _get(session, GenerationJob, job_id, "generation job")
    if job.status != "running":
        raise ConflictError(f"generation job {job.id} is {job.status}, not running")
    job.seed = _setting(seed, "seed", "seed")
    job.params = _job_params(params)
    session.flush()
    return job


def set_job_prompt_id(session: Session, job_id: int, prompt_id: str) -> GenerationJob:
    """Record the ComfyUI prompt a running job was queued as, so that clearing the job as
    stuck can also stop it in ComfyUI."""
    job = _get(session, GenerationJob, job_id, "generation job")
    if job.status != "running":
        raise ConflictError(f"generation job {job.id} is {job.status}, not running")
    job.comfyui_prompt_id = _text(prompt_id, "ComfyUI prompt id", required=True, max_length=64)
    session.flush()
    return job


def record_job_output(session: Session, job_id: int, relpath: str) -> GenerationJob:
    """Record the file a job made when it is not an image under review (a video clip)."""
    job = _get(session, GenerationJob, job_id, "generation job")
    job.params = dict(job.params or {}) | {"output": _relative_path(relpath, "job output")}
    session.flush()
    return job


def fail_stuck_jobs(
    session: Session, older_than: timedelta, now: datetime | None = None
) -> list[int]:
    """Fail pending jobs created, and running jobs started, more than `older_than` ago."""
    if not isinstance(older_than, timedelta) or older_than <= timedelta(0):
        raise InvalidInputError(f"older_than must be a positive timedelta, got {older_than!r}")
    now = _naive_utc(now) if now is not None else utcnow()
    cutoff = now - older_than
    since = func.coalesce(GenerationJob.started_at, GenerationJob.created_at)
    candidates = session.execute(
        select(GenerationJob.id, GenerationJob.status, since.label("since"))
        .where(
            or_(
                and_(GenerationJob.status == "pending", GenerationJob.created_at < cutoff),
                and_(GenerationJob.status == "running", since < cutoff),
            )
        )
        .order_by(GenerationJob.id)
    ).all()
    failed: list[int] = []
    for job_id, status, started in candidates:
        error = f"stuck: {status} since {started:%Y-%m-%d %H:%M:%S} UTC, longer than {older_than}"
        # Conditional on the status we saw: a job that finished meanwhile is left alone.
        statement = (
            update(GenerationJob)
            .where(GenerationJob.id == job_id, GenerationJob.status == status)
            .values(status="failed", error=error, finished_at=now)
        )
        if _updated_rows(session, statement) == 1:
            _reload(session, GenerationJob, job_id)  # the identity map may hold the old status
            failed.append(job_id)
    return failed


def fail_jobs_of_ended_runs(session: Session, ended: Callable[[str], str | None]) -> list[int]:
    """Fail every running job whose Dagster run has ended (`ended(run_id)` says how, e.g.
    "failure"; None while the run lives or is unknown): a run that ended without finishing its
    job (crashed, cancelled, its worker lost) never will, so the job need not wait out the
    stuck timeout. Returns their ids; a job that finishes meanwhile keeps its outcome."""
    running = session.execute(
        select(GenerationJob.id, GenerationJob.run_id)
        .where(GenerationJob.status == "running", GenerationJob.run_id.is_not(None))
        .order_by(GenerationJob.id)
    ).all()
    outcomes: dict[str, str | None] = {}
    failed: list[int] = []
    now = utcnow()
    for job_id, run_id in running:
        if run_id not in outcomes:  # one look-up per run, however many jobs it ran
            outcomes[run_id] = ended(run_id)
        how = outcomes[run_id]
        if how is None:
            continue
        error = f"its run {run_id[:8]} ended ({how}) before the job finished; request it again"
        statement = (
            update(GenerationJob)
            .where(GenerationJob.id == job_id, GenerationJob.status == "running")
            .values(status="failed", error=error, finished_at=now)
        )
        if _updated_rows(session, statement) == 1:
            _reload(session, GenerationJob, job_id)
            failed.append(job_id)
    return failed
