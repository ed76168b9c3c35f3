"""`generate`, `train`, `runs` and `jobs`: the loop's work started and watched by hand.

`generate` records jobs that the generation request sensor runs under the daemon (or runs
them here with `--now`); `train` puts a training run in the Dagster instance's queue, where the
daemon starts it under the GPU pool; `runs` and `jobs list` show what happened.
"""

from __future__ import annotations

import argparse
import json
from datetime import timedelta

from lora_pipeline import actions
from lora_pipeline.cli.common import CliError, Subcommands, login_name, registry, settings, typed
from lora_pipeline.config import Settings
from lora_pipeline.dataset.caption_strategies import parse_strategy
from lora_pipeline.dataset.captions import CaptionError
from lora_pipeline.dataset.selection import DatasetSelection, SelectionError
from lora_pipeline.generation.service import (
    DEFAULT_STUCK_MINUTES,
    MAX_REQUEST_COUNT,
    STUCK_MINUTES,
    GenerationPlan,
    clear_stuck_jobs,
)
from lora_pipeline.generation_settings import LIMITS, Limit
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.commands.images import ASSET_TYPE_PREFIX
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import JOB_STATUSES, GenerationJob
from lora_pipeline.training.launch import TRAINING_JOB, TrainingRequest, check_can_train

# `train` options → the trained_lora launchpad field they set.
TRAIN_OPTIONS = {
    "epochs": Limit(1, 10_000, whole=True),
    "learning_rate": Limit(1e-7, 1.0),
    "resolution": Limit(64, 4096, whole=True),
    "rank": Limit(1, 1024, whole=True),
    "max_steps": Limit(1, 10_000_000, whole=True),
}


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, default=str))


# --- generate -------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> None:
    current = settings()
    store = registry(current)
    job_ids = actions.request_generation(
        store,
        args.character,
        comfyui=bool(current.comfyui_url),
        kind="video" if args.video else "image",
        prompt=args.prompt,
        negative_prompt=args.negative or "",
        seed=args.seed,
        requested_by=f"cli:{login_name()}",
        count=args.count,
    )
    if not args.now:
        print(
            f"requested {len(job_ids)} generation job(s) for {args.character}: "
            f"{', '.join(map(str, job_ids))} (the generation request sensor runs them under the "
            "daemon; `lora-pipeline jobs list` shows them)"
        )
        return
    _generate_now(current, store, args.character, job_ids)


def _generate_now(current: Settings, store: Registry, slug: str, job_ids: list[int]) -> None:
    """Run the jobs in this process, holding the GPU as interactive work."""
    from lora_pipeline.generation.advisor import configured_advisors
    from lora_pipeline.generation.service import generate_for_character
    from lora_pipeline.logging_setup import quiet_ml_libraries
    from lora_pipeline.media.store import DataRoot
    from lora_pipeline.model_runtime import ModelRuntime

    quiet_ml_libraries()
    runtime = ModelRuntime(current)
    backends = runtime.backends(slug)
    with runtime.gpu_lock().hold(f"cli generate {slug}", "interactive", print):
        outcome = generate_for_character(
            store,
            DataRoot(current.data_root),
            backends,
            slug,
            GenerationPlan(job_ids=tuple(job_ids)),
            print,
            advisors=configured_advisors(),
        )
    for job_id, image_id in outcome.duplicates.items():
        print(f"job {job_id}: a copy of image {image_id}, no new image")
    if outcome.image_ids:
        print(f"new pending image(s) of {slug}: {', '.join(map(str, outcome.image_ids))}")
    if outcome.failed_jobs and not outcome.image_ids:
        raise CliError(f"every generation job failed: {outcome.failed_jobs} (`jobs list` says why)")


# --- train and runs -------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> None:
    current = settings()
    options: dict[str, object] = {
        name: getattr(args, name) for name in TRAIN_OPTIONS if getattr(args, name)
    }
    if args.backend:
        options["backend"] = args.backend
    if args.no_samples:
        options["samples"] = False
    request = TrainingRequest(
        args.character,
        _selection(args),
        options,
        caption_strategy=_caption_strategy(args.caption),
        started_by=f"cli:{login_name()}",
    )
    run_id = submit_training(current, request)
    print(
        f"training of {args.character} queued as run {run_id}: the daemon starts it when the "
        f"GPU is free (`lora-pipeline runs --character {args.character}`; in the UI "
        f"{current.dagster_ui_url.rstrip('/')}/runs/{run_id})"
    )


def submit_training(current: Settings, request: TrainingRequest) -> str:
    """Check the request, then put its run in the instance's queue (what `dagster job launch`
    does); the daemon starts it under the GPU pool. The one way a training is started by hand:
    `train` here, and the review app's Train tab, which `review` hands this to."""
    check_can_train(current, registry(current), request)
    from lora_pipeline.defs.instance import open_instance, submit_job_run

    instance = open_instance(current.dagster_home)
    return submit_job_run(
        instance, TRAINING_JOB, request.character, request.run_config(), request.tags()
    )


def _selection(args: argparse.Namespace) -> DatasetSelection:
    """The dataset rule of seed 003: approved images, filtered by tags (all, or any)."""
    tags = list(args.tag) + ([ASSET_TYPE_PREFIX + args.asset_type] if args.asset_type else [])
    try:
        return DatasetSelection(tuple(tags), "any" if args.tag_any else "all")
    except SelectionError as error:
        raise CliError(str(error)) from None


def _caption_strategy(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        # Checked here, not after the run waited for the GPU; `auto` needs no tagger to parse.
        parse_strategy(text, tagger_available=True)
    except CaptionError as error:
        raise CliError(str(error)) from None
    return text.strip().lower()


def cmd_runs(args: argparse.Namespace) -> None:
    from lora_pipeline.defs.instance import open_instance, run_summaries

    instance = open_instance(settings().dagster_home)
    summaries = run_summaries(instance, args.character, args.limit)
    if args.json:
        print_json([summary.as_json() for summary in summaries])
        return
    if not summaries:
        print("no runs yet")
    for run in summaries:
        where = " · ".join(part for part in (run.step, run.progress) if part)
        print(
            f"{run.run_id[:8]}  {run.created:%Y-%m-%d %H:%M}  {run.job:<16} "
            f"{run.character or '-':<12} {run.status:<9} {run.started_by}"
            + (f"  [{where}]" if where else "")
        )


# --- jobs -----------------------------------------------------------------------------------


def _job_json(job: GenerationJob) -> dict[str, object]:
    return {
        "id": job.id,
        "character_id": job.character_id,
        "kind": job.kind,
        "status": job.status,
        "seed": job.seed,
        "backend": job.backend,
        "run_id": job.run_id,
        "duplicate_of_image_id": job.duplicate_of_image_id,
        "error": job.error,
        "created_at": job.created_at.isoformat(),
    }


def cmd_jobs_list(args: argparse.Namespace) -> None:
    with registry(settings()).session(readonly=True) as session:
        character = commands.get_character(session, args.character) if args.character else None
        character_id = character.id if character else None
        jobs = queries.generation_jobs(session, character_id, args.status, args.limit)
        if args.json:
            print_json([_job_json(job) for job in jobs])
            return
        if not jobs:
            print("no generation jobs")
        for job in jobs:
            note = job.error or (
                f"copy of image {job.duplicate_of_image_id}" if job.duplicate_of_image_id else ""
            )
            run = f" run {job.run_id[:8]}" if job.run_id else ""
            print(
                f"job {job.id:<6} {job.kind:<5} {job.status:<9} seed {job.seed:<12} "
                f"{job.backend}{run}" + (f"  {note}" if note else "")
            )


def cmd_jobs_clear_stuck(args: argparse.Namespace) -> None:
    from lora_pipeline.review.app import comfyui_canceller

    current = settings()
    older_than = timedelta(minutes=args.minutes)
    cleared = clear_stuck_jobs(registry(current), older_than, comfyui_canceller(current))
    print(f"cleared {len(cleared.failed)} job(s) older than {args.minutes} min: {cleared.failed}")
    for job_id, what in cleared.cancelled.items():
        print(f"  job {job_id}: its ComfyUI prompt {what}")
    for job_id, error in cleared.cancel_errors.items():
        print(f"  job {job_id}: could not stop its ComfyUI prompt: {error}")


def register(sub: Subcommands) -> None:
    generate = sub.add_parser("generate", help="images (or a clip) of a character")
    generate.add_argument("character")
    generate.add_argument(
        "--count", type=typed("--count", Limit(1, MAX_REQUEST_COUNT, whole=True)), default=1
    )
    generate.add_argument(
        "--seed", type=typed("--seed", LIMITS["seed"]), help="pin the seed (default: random)"
    )
    generate.add_argument("--prompt", help="replaces the character's prompt")
    generate.add_argument("--negative", help="added to the negative prompt")
    generate.add_argument("--video", action="store_true", help="a short clip instead")
    generate.add_argument("--now", action="store_true", help="run here instead of the daemon")
    generate.set_defaults(func=cmd_generate)

    train = sub.add_parser("train", help="queue a training of a character for the daemon")
    train.add_argument("character")
    for name, limit in TRAIN_OPTIONS.items():
        option = f"--{name.replace('_', '-')}"
        train.add_argument(option, dest=name, type=typed(option, limit))
    train.add_argument("--backend", choices=("auto", "builtin", "kohya"))
    train.add_argument("--no-samples", action="store_true", help="no sample image per epoch")
    train.add_argument(
        "--tag", action="append", default=[], help="only approved images with this tag (repeatable)"
    )
    train.add_argument("--tag-any", action="store_true", help="any of the --tag tags, not all")
    train.add_argument("--asset-type", help="only approved images of this asset type")
    train.add_argument(
        "--caption",
        metavar="STRATEGY",
        help="caption strategy: auto, design, tags, vlm or parts joined by + (default: "
        "LORA_PIPELINE_CAPTION_STRATEGY)",
    )
    train.set_defaults(func=cmd_train)

    runs = sub.add_parser("runs", help="the newest Dagster runs and where they are")
    runs.add_argument("--character")
    runs.add_argument("--limit", type=typed("--limit", Limit(1, 1000, whole=True)), default=20)
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=cmd_runs)

    jobs = sub.add_parser("jobs", help="generation jobs").add_subparsers(
        dest="action", required=True
    )
    listing = jobs.add_parser("list", help="the newest generation jobs")
    listing.add_argument("--character")
    listing.add_argument("--status", choices=JOB_STATUSES)
    listing.add_argument("--limit", type=typed("--limit", Limit(1, 1000, whole=True)), default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_jobs_list)
    stuck = jobs.add_parser("clear-stuck", help="fail jobs pending or running for too long")
    stuck.add_argument(
        "--minutes", type=typed("--minutes", STUCK_MINUTES), default=DEFAULT_STUCK_MINUTES
    )
    stuck.set_defaults(func=cmd_jobs_clear_stuck)
