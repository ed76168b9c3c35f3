"""Where each character stands in the pipeline, for the Characters and Approve tabs (issue 15
item 1): regenerations and generation jobs, training (step/total, loss, ETA, latest sample,
pauses), evaluation and the release, each with a link to its Dagster run.

Read from the registry, the training status file (training/status.py) and the GPU lock's
holder file; the Dagster run states come from a `RunSource` handed to the app by whoever may
talk to Dagster (the CLI passes `defs.instance.run_summaries`), because the review app itself
never imports Dagster. Without one, the registry and files alone say what they can.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from lora_pipeline.config import Settings
from lora_pipeline.dataset.quality import MIN_APPROVED_IMAGES
from lora_pipeline.media.store import DataRoot, UnsafePathError
from lora_pipeline.registry import queries
from lora_pipeline.registry.models import (
    IMAGE_STATUSES,
    Character,
    DatasetVersion,
    Eval,
    Feedback,
    GenerationJob,
    LoraRelease,
)
from lora_pipeline.training.status import read_status, status_path

ACTIVE_RUN_STATUSES = ("queued", "not_started", "starting", "started", "canceling")
SAMPLE_TYPES = (".png", ".jpg", ".jpeg", ".webp")


class RunLike(Protocol):
    """A Dagster run as `defs.instance.RunSummary` describes it."""

    run_id: str
    job: str
    character: str | None
    status: str
    step: str | None


RunSource = Callable[[], Sequence[RunLike]]


def run_url(settings: Settings, run_id: str | None) -> str | None:
    return f"{settings.dagster_ui_url.rstrip('/')}/runs/{run_id}" if run_id else None


def gpu_holders(settings: Settings) -> list[str]:
    """Who holds each GPU now, as the lock's holder file says ("run 1a2b3c4d trained_lora …")."""
    folder = Path(settings.gpu_lock_dir)
    holders = []
    for path in sorted(folder.glob("gpu-*.holder.json")) if folder.is_dir() else ():
        try:
            record = json.loads(path.read_text())
            holders.append(f"{record['holder']} since {record['since']}")
        except (OSError, ValueError, KeyError, TypeError):
            continue  # released while we read it
    return holders


def _line(kind: str, state: str, text: str, url: str | None = None) -> dict[str, Any]:
    return {"kind": kind, "state": state, "text": text, "url": url}


def _seconds_since(iso: object) -> float:
    try:
        then = datetime.fromisoformat(str(iso))
    except ValueError:
        return 0.0
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - then).total_seconds())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    return f"{minutes // 60} h {minutes % 60} min"


def _sample_url(root: DataRoot, slug: str, status: dict[str, Any]) -> str | None:
    return f"/state/{slug}/sample" if sample_file(root, status) else None


def sample_file(root: DataRoot, status: dict[str, Any] | None) -> Path | None:
    """The latest sample image the training wrote, only if it is an image inside the data root."""
    sample = (status or {}).get("sample")
    if not isinstance(sample, str) or Path(sample).suffix.lower() not in SAMPLE_TYPES:
        return None
    try:
        path = root.path(root.relative(Path(sample)))
    except (UnsafePathError, ValueError):
        return None
    return path if path.is_file() else None


def character_states(
    session: Session, settings: Settings, runs: Sequence[RunLike] = ()
) -> dict[str, dict[str, Any]]:
    """slug -> {"label", "lines": [{kind, state, text, url}], "training": {...} or None}."""
    root = DataRoot(settings.data_root)
    holders = gpu_holders(settings)
    behind = f" (waiting for the GPU, held by {'; '.join(holders)})" if holders else ""
    active: dict[str, list[RunLike]] = defaultdict(list)
    for run in runs:
        if run.character and run.status in ACTIVE_RUN_STATUSES:
            active[run.character].append(run)
    # The image counts too: a page opened before images came keeps its counts current.
    image_counts = queries.image_counts_by_character(session)
    feedback: dict[int, list[Feedback]] = defaultdict(list)
    for row in session.scalars(
        select(Feedback).where(Feedback.regeneration_state.in_(("queued", "requested")))
    ):
        feedback[row.character_id].append(row)
    jobs: dict[int, list[GenerationJob]] = defaultdict(list)
    for job in session.scalars(
        select(GenerationJob).where(GenerationJob.status.in_(("pending", "running")))
    ):
        jobs[job.character_id].append(job)
    latest_release: dict[int, LoraRelease] = {}
    for release in session.scalars(select(LoraRelease).order_by(LoraRelease.id)):
        latest_release[release.character_id] = release
    states = {}
    for character in session.scalars(select(Character).order_by(Character.slug)):
        lines: list[dict[str, Any]] = []
        runs_of = {run.run_id: run for run in active.get(character.slug, [])}

        def queued_text(
            run_id: str | None, runs_of: dict[str, RunLike] = runs_of
        ) -> tuple[str, str]:
            run = runs_of.get(run_id or "")
            if run is None:
                return "requested", ""
            if run.status in ("queued", "not_started", "starting"):
                return "queued", " queued" + behind
            return "running", f" running ({run.step})" if run.step else " running"

        for run_id in dict.fromkeys(f.regeneration_run_id for f in feedback[character.id]):
            count = sum(f.regeneration_run_id == run_id for f in feedback[character.id])
            state, where = queued_text(run_id)
            what = "waiting for the rejection sensor" if run_id is None else f"run {run_id[:8]}"
            lines.append(
                _line(
                    "regeneration",
                    state,
                    f"{count} regeneration(s) {state}{where or ''} · {what}",
                    run_url(settings, run_id),
                )
            )
        for run_id in dict.fromkeys(j.run_id for j in jobs[character.id]):
            group = [j for j in jobs[character.id] if j.run_id == run_id]
            running = any(j.status == "running" for j in group)
            state = "running" if running else "queued"
            where = "" if running or not run_id else behind
            lines.append(
                _line(
                    "generation",
                    state,
                    f"{len(group)} image(s) {state}{where}"
                    + (f" · run {run_id[:8]}" if run_id else " · waiting for the request sensor"),
                    run_url(settings, run_id),
                )
            )
        training = _training(root, settings, character.slug, runs_of, behind)
        if training:
            lines.append(training["line"])
        release = latest_release.get(character.id)
        verdict = None
        if release is not None:
            evaluation = session.scalar(
                select(Eval)
                .where(Eval.lora_release_id == release.id)
                .order_by(Eval.id.desc())
                .limit(1)
            )
            verdict = evaluation.verdict if evaluation else None
            eval_text = f"gate: {verdict}" if verdict else "evaluation pending"
            lines.append(
                _line(
                    "release",
                    release.status,
                    f"release {release.id}: {release.status} ({eval_text})",
                    run_url(settings, release.run_id),
                )
            )
        counts = image_counts.get(character.id) or dict.fromkeys(IMAGE_STATUSES, 0)
        count = counts["approved"]
        # A release trained on fewer images than are approved now is not the last word: more
        # were approved since, and the training sensor will train them.
        trained_on = (
            session.get(DatasetVersion, release.dataset_version_id)
            if release is not None and release.dataset_version_id
            else None
        )
        stale = trained_on is not None and trained_on.image_count != count
        states[character.slug] = {
            "label": _label(count, training, None if stale else release, verdict),
            "approved": count,
            "counts": dict(counts),
            "lines": lines,
            "training": {k: v for k, v in training.items() if k != "line"} if training else None,
        }
    return states


def _training(
    root: DataRoot,
    settings: Settings,
    slug: str,
    runs_of: dict[str, RunLike],
    behind: str,
) -> dict[str, Any] | None:
    """The character's training now: a queued training run, or the status file's running,
    paused or evaluating one."""
    queued = [r for r in runs_of.values() if r.job == "training_job"]
    status = read_status(status_path(root.root, slug)) or {}
    run_id = status.get("run_id")
    run = runs_of.get(run_id or "")
    # Without a run source, trust the file; with one, the file's run must still be going.
    live = run is not None if runs_of or queued else status.get("state") not in (None, "trained")
    if queued and not (run and run.status == "started"):
        first = queued[0]
        if first.status != "started":
            url = run_url(settings, first.run_id)
            line = _line("training", "queued", "training queued" + behind, url)
            return {"state": "queued", "line": line, "run_id": first.run_id}
        run, run_id, live = first, first.run_id, True
        if status.get("run_id") != first.run_id:
            status = {}
    if not live or not status and not run:
        return None
    if run is not None and run.step and run.step.startswith("eval_grid"):
        line = _line("evaluation", "running", "evaluation running", run_url(settings, run_id))
        return {"state": "evaluating", "line": line, "run_id": run_id}
    step, total = status.get("step") or 0, status.get("total_steps") or 0
    state = status.get("state") or "running"
    parts = [f"step {step}/{total}" if total else "starting"]
    if status.get("loss") is not None:
        parts.append(f"loss {float(status['loss']):.4f}")
    if status.get("eta_s") is not None and state == "running":
        parts.append(f"ETA {_duration(float(status['eta_s']))}")
    if state == "paused":
        seconds = float(status.get("paused_s") or 0) + _seconds_since(status.get("paused_since"))
        text = (
            f"training paused for {status.get('paused_jobs', 0)} interactive job(s), "
            f"{_duration(seconds)} · " + ", ".join(parts)
        )
    elif state == "trained":
        text = "training done, evaluation next"
    else:
        text = "training… " + ", ".join(parts)
        if status.get("paused_count"):
            text += (
                f" (paused {status['paused_count']} time(s) for {status.get('paused_jobs', 0)}"
                f" interactive job(s), {_duration(float(status.get('paused_s') or 0))})"
            )
    return {
        "state": state,
        "run_id": run_id,
        "step": step,
        "total_steps": total,
        "loss": status.get("loss"),
        "eta_s": status.get("eta_s"),
        "sample_url": _sample_url(root, slug, status),
        "line": _line("training", state, text, run_url(settings, run_id)),
    }


def _label(
    approved: int,
    training: dict[str, Any] | None,
    release: LoraRelease | None,
    verdict: str | None,
) -> str:
    if training:
        return {
            "queued": "training queued",
            "paused": "training… (paused)",
            "evaluating": "evaluating…",
        }.get(training["state"], "training…")
    if release is not None:
        return f"trained: release {release.id} (gate: {verdict or 'pending'})"
    if approved >= MIN_APPROVED_IMAGES:
        return "ready for training"
    return f"{approved} / {MIN_APPROVED_IMAGES} approved"
