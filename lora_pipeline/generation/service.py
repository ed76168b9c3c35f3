"""Generate images of a character from its registry settings.

Each image is a generation job row (pending → running → completed/failed/duplicate) and, on
success, a new `pending` image carrying its parameters and the rejection it answers.

Seeds behave as ComfyUI users expect: a fresh random seed per image unless the user pins one
(per request, or the character's "lock seed"), and a regeneration never reuses the seed of the
image it answers. An output whose bytes equal an existing image is never reported as new: a
regeneration retries with another seed, a plain request is recorded as a duplicate.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence, Set
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any, Protocol

from sqlalchemy.orm import Session

from lora_pipeline.generation.advisor import PromptAdvisor, propose_refinement
from lora_pipeline.generation.backends import ImageBackend, RenderedFile
from lora_pipeline.generation.local import GenerationError, GenerationRequest, LoraSpec
from lora_pipeline.generation.negatives import merge_negative_prompt, negative_terms_for
from lora_pipeline.generation.profiles import character_profile
from lora_pipeline.generation_settings import Limit
from lora_pipeline.media.store import DataRoot, StoredImage
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.errors import ConflictError, InvalidInputError
from lora_pipeline.registry.models import (
    Character,
    Feedback,
    GenerationJob,
    Image,
    LoraRelease,
)

Log = Callable[[str], None]
# A regeneration whose output copies an existing image draws again this many times with a
# fresh seed before its job fails.
COPY_RETRIES = 3
# Fresh seeds: the range every backend takes (numpy's and ComfyUI's included).
SEED_RANGE = 2**32
_seeds = random.SystemRandom()


class VideoBackend(Protocol):
    name: str

    def render(
        self, request: GenerationRequest, lora: Sequence[LoraSpec], frames: int
    ) -> RenderedFile:
        """One short clip for the request with the LoRA stack."""
        ...


@dataclass(frozen=True)
class GenerationPlan:
    count: int = 1
    seed: int | None = None
    prompt_override: str | None = None
    extra_negative: str = ""
    # Rejections to answer: one new image each (then count and seed do not apply).
    feedback_ids: tuple[int, ...] = ()
    # Jobs requested beforehand (the review app's Generate tab): they are run as they are,
    # and count, seed, prompt_override and extra_negative do not apply.
    job_ids: tuple[int, ...] = ()
    # The Dagster run doing the work, recorded on its jobs and on the rejections it answers.
    run_id: str | None = None


@dataclass
class GenerationOutcome:
    image_ids: list[int] = field(default_factory=list)
    failed_jobs: list[int] = field(default_factory=list)
    # Jobs cleared as stuck (failed by someone else) while this run had them.
    cleared_jobs: list[int] = field(default_factory=list)
    # Job id → the existing image its output was a byte-for-byte copy of.
    duplicates: dict[int, int] = field(default_factory=dict)
    prompt: str = ""
    negative_prompt: str = ""


def build_prompt(character: Character) -> str:
    """The trigger word first, then the design prompt and the project's style."""
    parts = [character.trigger_word, character.design_prompt, character.project.style_prompt]
    return ", ".join(p.strip() for p in parts if p and p.strip())


def build_negative_prompt(character: Character, feedback: Sequence[Feedback], extra: str) -> str:
    terms: list[str] = []
    for item in feedback:
        terms.extend(item.negative_terms or negative_terms_for(item.categories))
    base = merge_negative_prompt(character.negative_prompt, [extra] if extra else [])
    return merge_negative_prompt(base, terms)


@dataclass(frozen=True)
class Backends:
    """What draws: images always, video clips only when a video backend (ComfyUI) is set.
    `checkpoint` names the base model, to pick the LoRA releases trained on it."""

    image: ImageBackend
    checkpoint: str
    video: VideoBackend | None = None


def lora_strength(session: Session, character: Character) -> float:
    """The strength of production LoRAs: the project's default generation profile's, else
    DEFAULT_LORA_STRENGTH."""
    return character_profile(session, character).lora_strength


def baseline_lora(
    session: Session, root: DataRoot, character: Character, checkpoint: str
) -> tuple[LoraRelease, LoraSpec] | None:
    """The checkpoint's active baseline (shared) release, as the LoRA to put under others."""
    release = queries.active_baseline_release(session, checkpoint)
    if release is None:
        return None
    return release, LoraSpec(root.path(release.path), lora_strength(session, character))


def production_loras(
    session: Session,
    root: DataRoot,
    character: Character,
    checkpoint: str,
    log: Log = lambda _: None,
) -> list[tuple[LoraRelease, LoraSpec]]:
    """The LoRAs every generation of the character uses: the checkpoint's active baseline
    (shared) release under the character's own active release."""
    chosen = [pair for pair in [baseline_lora(session, root, character, checkpoint)] if pair]
    own = queries.active_release(session, character.id, checkpoint)
    if own is not None:
        chosen.append((own, LoraSpec(root.path(own.path), lora_strength(session, character))))
    elif queries.active_release(session, character.id) is not None:
        # Active on another checkpoint only: say so rather than silently drawing without it.
        log(
            f"{character.slug} has an active LoRA, but not for checkpoint "
            f"{commands.checkpoint_key(checkpoint)!r}: generating without it"
        )
    return chosen


def generate_for_character(
    registry: Registry,
    root: DataRoot,
    backends: Backends | ImageBackend,
    character_slug: str,
    plan: GenerationPlan,
    log: Log,
    advisors: Sequence[PromptAdvisor] = (),
) -> GenerationOutcome:
    """New pending images of the character: `plan.job_ids` runs requested jobs, otherwise
    `plan.count` new jobs are made from the character's settings. Every job uses the active
    LoRA releases (see `production_loras`). After a regeneration, the advisors may propose a
    refined design prompt (see `advisor.propose_refinement`)."""
    if not isinstance(backends, Backends):
        backends = Backends(backends, checkpoint=getattr(backends, "checkpoint", ""))
    if plan.job_ids:
        outcome = _run_requested_jobs(registry, root, backends, character_slug, plan, log)
    else:
        outcome = _run_new_jobs(registry, root, backends, character_slug, plan, log)
    if plan.feedback_ids and advisors:
        propose_refinement(registry, character_slug, advisors, log)
    return outcome


def _lora_params(loras: Sequence[tuple[LoraRelease, LoraSpec]]) -> list[dict[str, Any]]:
    return [
        {"release_id": r.id, "scope": r.scope, "path": r.path, "strength": spec.strength}
        for r, spec in loras
    ]


def _run_new_jobs(
    registry: Registry,
    root: DataRoot,
    backends: Backends,
    character_slug: str,
    plan: GenerationPlan,
    log: Log,
) -> GenerationOutcome:
    """`plan.count` new jobs, or one per rejection in `plan.feedback_ids` (its negatives, and
    never the seed of the image it answers)."""
    backend = backends.image
    with registry.session() as session:
        character = commands.get_character(session, character_slug)
        feedback = _feedback_of(session, character, plan.feedback_ids)
        answers: list[tuple[Feedback, ...]] = [(f,) for f in feedback] or [()] * plan.count
        avoid = rejected_seeds(session, feedback)
        seeds = pick_seeds(character, None if feedback else plan.seed, len(answers), avoid)
        prompt = plan.prompt_override or build_prompt(character)
        negatives = [build_negative_prompt(character, a, plan.extra_negative) for a in answers]
        settings = request_settings(character)
        character_id = character.id
        loras = production_loras(session, root, character, backends.checkpoint, log)
        lora_params = _lora_params(loras)
    outcome = GenerationOutcome(prompt=prompt, negative_prompt=negatives[0])
    specs = tuple(spec for _, spec in loras)
    for answer, seed, negative in zip(answers, seeds, negatives, strict=True):
        request = GenerationRequest(prompt=prompt, negative_prompt=negative, seed=seed, **settings)
        params = asdict(request) | {"backend": backend.name, "loras": lora_params}
        feedback_ids = [f.id for f in answer]
        with registry.session() as session:
            job = commands.create_generation_job(
                session,
                character_id,
                request.prompt,
                request.negative_prompt,
                request.seed,
                params,
                backend=backend.name,
                feedback_ids=feedback_ids,
                run_id=plan.run_id,
            )
            commands.mark_job(session, job.id, "running")
            job_id = job.id
        started = _StartedJob(
            job_id,
            character_id,
            character_slug,
            request,
            params,
            feedback_ids,
            specs,
            run_id=plan.run_id,
            avoid_seeds=frozenset(avoid),
        )
        _finish_job(registry, root, backends, started, outcome, log)
    return outcome


def _feedback_of(
    session: Session, character: Character, feedback_ids: Sequence[int]
) -> list[Feedback]:
    rows = [session.get(Feedback, i) for i in dict.fromkeys(feedback_ids)]
    return [f for f in rows if f is not None and f.character_id == character.id]


def rejected_seeds(session: Session, feedback: Sequence[Feedback]) -> set[int]:
    """The seeds of the images these rejections are about: a regeneration never reuses them."""
    seeds: set[int] = set()
    for item in feedback:
        image = session.get(Image, item.image_id)
        seed = (image.generation_params or {}).get("seed") if image is not None else None
        if isinstance(seed, int):
            seeds.add(seed)
    return seeds


def fresh_seed(avoid: Set[int] = frozenset()) -> int:
    """A random seed, as ComfyUI's "randomize", that is none of `avoid`."""
    while True:
        seed = _seeds.randrange(SEED_RANGE)
        if seed not in avoid:
            return seed


def pick_seeds(
    character: Character, pinned: int | None, count: int, avoid: Set[int] = frozenset()
) -> list[int]:
    """`count` seeds, each its own: consecutive from a pinned seed (the request's, else the
    character's locked one), otherwise fresh random ones; none of them in `avoid`."""
    base = pinned
    if base is None and character.seed_locked and character.seed is not None:
        base = character.seed
    taken = set(avoid)
    seeds: list[int] = []
    for offset in range(count):
        seed = base + offset if base is not None else fresh_seed(taken)
        if seed in taken:
            seed = fresh_seed(taken)
        taken.add(seed)
        seeds.append(seed)
    return seeds


@dataclass(frozen=True)
class _StartedJob:
    job_id: int
    character_id: int
    character_slug: str
    request: GenerationRequest
    params: dict[str, Any]
    feedback_ids: list[int]
    loras: tuple[LoraSpec, ...] = ()
    kind: str = "image"
    run_id: str | None = None
    # Seeds a retry after a copied output must not draw (those of the rejected images).
    avoid_seeds: frozenset[int] = frozenset()


def _run_requested_jobs(
    registry: Registry,
    root: DataRoot,
    backends: Backends,
    character_slug: str,
    plan: GenerationPlan,
    log: Log,
) -> GenerationOutcome:
    outcome = GenerationOutcome()
    for job_id in plan.job_ids:
        job = _start_requested_job(
            registry, root, backends, character_slug, job_id, plan.run_id, outcome, log
        )
        if job is not None:
            outcome.prompt = job.request.prompt
            outcome.negative_prompt = job.request.negative_prompt
            _finish_job(registry, root, backends, job, outcome, log)
    return outcome


def _start_requested_job(
    registry: Registry,
    root: DataRoot,
    backends: Backends,
    character_slug: str,
    job_id: int,
    run_id: str | None,
    outcome: GenerationOutcome,
    log: Log,
) -> _StartedJob | None:
    """Mark a pending job running and build its request; None when it is not this run's."""
    with registry.session() as session:
        character = commands.get_character(session, character_slug)
        job = session.get(GenerationJob, job_id)
        if job is None or job.character_id != character.id:
            raise InvalidInputError(
                f"generation job {job_id} is not a job of character {character_slug!r}"
            )
        runner = backends.image if job.kind == "image" else backends.video or backends.image
        try:
            commands.mark_job(session, job.id, "running", backend=runner.name, run_id=run_id)
        except ConflictError as error:
            # A retried run, or a job cleared as stuck meanwhile: never run a job twice.
            log(f"{error}; not run again")
            if job.status == "failed":
                outcome.cleared_jobs.append(job.id)
            return None
        settings = request_settings(character)
        overrides = {k: job.params[k] for k in settings if job.params.get(k) is not None}
        fields = (job.prompt, job.negative_prompt, job.seed, job.kind, list(job.feedback_ids))
        params = dict(job.params)
        loras = production_loras(session, root, character, backends.checkpoint, log)
    prompt, negative, seed, kind, feedback_ids = fields
    try:
        request = GenerationRequest(prompt, negative, seed, **(settings | overrides))
    except (GenerationError, TypeError) as error:
        _fail_job(registry, job_id, f"invalid job parameters: {error}", outcome, log)
        return None
    backend = backends.image if kind == "image" else backends.video
    if backend is None:
        message = (
            f"the {backends.image.name} backend generates images only; {kind} jobs need "
            "ComfyUI (set LORA_PIPELINE_COMFYUI_URL)"
        )
        _fail_job(registry, job_id, message, outcome, log)
        return None
    params |= asdict(request) | {"backend": backend.name, "loras": _lora_params(loras)}
    specs = tuple(spec for _, spec in loras)
    return _StartedJob(
        job_id, character.id, character_slug, request, params, feedback_ids, specs, kind, run_id
    )


def request_settings(character: Character) -> dict[str, Any]:
    """The character's settings that a GenerationRequest takes (all but the seed)."""
    return {
        "steps": character.steps,
        "cfg": character.cfg,
        "sampler": character.sampler,
        "scheduler": character.scheduler,
        "width": character.width,
        "height": character.height,
    }


def _fail_job(
    registry: Registry,
    job_id: int,
    error: str,
    outcome: GenerationOutcome,
    log: Log,
    job: _StartedJob | None = None,
) -> None:
    """Fail the job (and the regeneration of the rejections it answers) with one line."""
    try:
        with registry.session() as session:
            commands.mark_job(session, job_id, "failed", error=error.splitlines()[0][:500])
            if job is not None and job.feedback_ids:
                commands.mark_feedback_regeneration(
                    session, job.feedback_ids, "failed", run_id=job.run_id
                )
    except ConflictError as conflict:
        # Cleared as stuck meanwhile (already failed): that is not this run's failure.
        log(f"generation job {job_id}: {conflict}")
        outcome.cleared_jobs.append(job_id)
        return
    outcome.failed_jobs.append(job_id)
    log(f"generation job {job_id} failed: {error}")


def _track_prompt(backend: object, registry: Registry, job_id: int, log: Log) -> None:
    """Backends that queue the work elsewhere (ComfyUI) report its id through `on_queued`;
    the job row keeps it, so that clearing the job as stuck also stops it there. A job
    cleared before its prompt was queued has its prompt cancelled at once."""
    if not hasattr(backend, "on_queued"):
        return

    def record(prompt_id: str) -> None:
        try:
            with registry.session() as session:
                commands.set_job_prompt_id(session, job_id, prompt_id)
        except ConflictError as conflict:
            log(f"{conflict}: cancelling its ComfyUI prompt {prompt_id}")
            client = getattr(backend, "client", None)
            if client is not None:
                client.cancel(prompt_id)

    backend.on_queued = record


def _finish_job(
    registry: Registry,
    root: DataRoot,
    backends: Backends,
    job: _StartedJob,
    outcome: GenerationOutcome,
    log: Log,
) -> None:
    """Generate a running job's output: a new pending image of the character (a video job's
    clip is stored and recorded on the job)."""
    backend = backends.video if job.kind == "video" else backends.image
    _track_prompt(backend, registry, job.job_id, log)
    if job.kind == "video":
        try:
            _finish_video_job(registry, root, backends.video, job, log)
        except Exception as exc:  # noqa: BLE001 - any backend failure fails this job, not the run
            _fail_job(registry, job.job_id, str(exc) or type(exc).__name__, outcome, log, job)
        return
    tried: set[int] = set()
    while True:
        try:
            image = backend.generate(job.request, job.loras)
        except Exception as exc:  # noqa: BLE001 - any backend failure fails this job, not the run
            _fail_job(registry, job.job_id, str(exc) or type(exc).__name__, outcome, log, job)
            return
        try:
            image_id, new = _record_image(registry, job, root.put_image(image))
        except ConflictError as conflict:
            log(f"{conflict}: it was cleared while it ran, its image is not added")
            outcome.cleared_jobs.append(job.job_id)
            return
        if new:
            outcome.image_ids.append(image_id)
            log(f"generated new image {image_id} (seed {job.request.seed}, job {job.job_id})")
            return
        tried.add(job.request.seed)
        if not job.feedback_ids:
            _record_duplicate(registry, job, image_id, outcome, log)
            return
        if len(tried) > COPY_RETRIES:
            copy = f"produced a copy of image {image_id} (seeds {sorted(tried)})"
            _fail_job(registry, job.job_id, copy, outcome, log, job)
            return
        job = _reseeded(registry, job, fresh_seed(tried | job.avoid_seeds))
        log(f"job {job.job_id} copied image {image_id}; drawing again with seed {job.request.seed}")


def _record_duplicate(
    registry: Registry, job: _StartedJob, image_id: int, outcome: GenerationOutcome, log: Log
) -> None:
    """A plain request whose output equals an existing image: the job says so, the image (and
    its status) is left as it was."""
    try:
        with registry.session() as session:
            commands.mark_job(session, job.job_id, "duplicate", duplicate_of=image_id)
    except ConflictError as conflict:
        log(f"{conflict}: it was cleared while it ran")
        return
    outcome.duplicates[job.job_id] = image_id
    log(
        f"generation job {job.job_id} produced a copy of image {image_id} "
        f"(seed {job.request.seed}): recorded as a duplicate, no new image"
    )


def _reseeded(registry: Registry, job: _StartedJob, seed: int) -> _StartedJob:
    request = replace(job.request, seed=seed)
    params = job.params | {"seed": seed}
    with registry.session() as session:
        commands.reseed_job(session, job.job_id, seed, params)
    return replace(job, request=request, params=params)


def _record_image(registry: Registry, job: _StartedJob, stored: StoredImage) -> tuple[int, bool]:
    """Add the job's image; (id, True) when it is new, else (id of the image it copies,
    False) with nothing changed: that image keeps its status and its job."""
    with registry.session() as session:
        row, new = commands.add_image(
            session,
            job.character_id,
            stored.sha256,
            stored.relpath,
            stored.width,
            stored.height,
            "generated",
            provenance={"generation_job_id": job.job_id, "answers_feedback": job.feedback_ids},
            generation_job_id=job.job_id,
            generation_params=job.params,
        )
        if not new:
            return row.id, False
        commands.mark_job(session, job.job_id, "completed")
        if job.feedback_ids:
            commands.mark_feedback_regeneration(
                session, job.feedback_ids, "done", run_id=job.run_id, image_id=row.id
            )
        return row.id, True


def _finish_video_job(
    registry: Registry, root: DataRoot, backend: VideoBackend, job: _StartedJob, log: Log
) -> None:
    frames = int(job.params.get("frames") or VIDEO_FRAMES)
    rendered = backend.render(job.request, job.loras, frames=frames)
    # ComfyUI names the file; keep only a safe base name of it, under the job's own folder.
    suffix = PurePosixPath(rendered.filename).suffix.lower()
    suffix = suffix if suffix in VIDEO_SUFFIXES else ".bin"
    relpath = f"videos/{job.character_slug}/job-{job.job_id}{suffix}"
    root.write_bytes_atomic(relpath, rendered.data)
    try:
        with registry.session() as session:
            commands.mark_job(session, job.job_id, "completed")
            commands.record_job_output(session, job.job_id, relpath)
    except ConflictError as conflict:
        log(f"{conflict}: it was cleared while it ran, its clip is not recorded")
        return
    log(f"rendered clip {relpath} (seed {job.request.seed}, job {job.job_id})")


# --- requests from the review app -----------------------------------------------------------------

REQUEST_MARK = "requested_by"
JOB_KINDS = ("image", "video")
# The guide's video mode: at most 512×512 and 16 frames.
VIDEO_MAX_SIZE = 512
VIDEO_FRAMES = 16
VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".webp", ".mov", ".mkv")


def request_generation(
    session: Session,
    character_slug: str,
    kind: str = "image",
    prompt_override: str | None = None,
    negative_prompt: str = "",
    seed: int | None = None,
    backend: str = "diffusers",
    requested_by: str = "review",
    count: int = 1,
) -> list[GenerationJob]:
    """Record `count` pending generation jobs for the generation request sensor to run, each
    with its own seed (see `pick_seeds`).

    A job carries the full prompt, negative prompt, seed and settings, so the run makes
    exactly what was asked even if the character's settings change meanwhile.
    """
    if kind not in JOB_KINDS:
        raise InvalidInputError(f"invalid generation kind {kind!r}: use image or video")
    character = commands.get_character(session, character_slug)
    settings = request_settings(character)
    params: dict[str, Any] = {"kind": kind, REQUEST_MARK: requested_by or "review"}
    if kind == "video":
        settings["width"] = min(settings["width"], VIDEO_MAX_SIZE)
        settings["height"] = min(settings["height"], VIDEO_MAX_SIZE)
        params["frames"] = VIDEO_FRAMES
    override = (prompt_override or "").strip()
    extra = (negative_prompt or "").strip()
    params |= settings | {"prompt_override": override or None, "negative_override": extra or None}
    prompt = override or build_prompt(character)
    negative = merge_negative_prompt(character.negative_prompt, [extra] if extra else [])
    return [
        commands.create_generation_job(
            session, character.id, prompt, negative, each, params, backend=backend, kind=kind
        )
        for each in pick_seeds(character, seed, _count(count))
    ]


# The most images one request may ask for (the Generate tab and `lora-pipeline generate`).
MAX_REQUEST_COUNT = 100


def _count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_REQUEST_COUNT:
        raise InvalidInputError(f"invalid count {count!r}: use 1 to {MAX_REQUEST_COUNT}")
    return count


def is_request(job: GenerationJob) -> bool:
    """Whether the job was requested (the app, the CLI), not made by the generation stage."""
    return bool((job.params or {}).get(REQUEST_MARK))


def pending_requests(session: Session, after_id: int) -> list[GenerationJob]:
    """Requested jobs still pending, newer than a sensor's cursor, oldest first."""
    return [job for job in queries.pending_jobs_after(session, after_id) if is_request(job)]


# A job pending or running this long is taken for stuck (the Generate tab, `jobs clear-stuck`).
DEFAULT_STUCK_MINUTES = 10
STUCK_MINUTES = Limit(1, 7 * 24 * 60, whole=True)


@dataclass
class ClearedJobs:
    failed: list[int] = field(default_factory=list)
    # Job id → what ComfyUI did with its prompt ("interrupted", "removed", ...) or the error.
    cancelled: dict[int, str] = field(default_factory=dict)
    cancel_errors: dict[int, str] = field(default_factory=dict)


def clear_stuck_jobs(
    registry: Registry,
    older_than: timedelta,
    cancel: Callable[[str], object] | None = None,
) -> ClearedJobs:
    """Fail jobs pending or running for longer than `older_than`; those sent to ComfyUI are
    also stopped there (`cancel(prompt_id)`: interrupted if running, deleted if queued), so a
    cleared job does not keep the GPU busy for nobody."""
    cleared = ClearedJobs()
    with registry.session() as session:
        cleared.failed = commands.fail_stuck_jobs(session, older_than)
        prompts = queries.comfyui_prompt_ids(session, cleared.failed)
    if cancel is None:
        return cleared
    for job_id, prompt_id in sorted(prompts.items()):
        try:
            cleared.cancelled[job_id] = str(cancel(prompt_id))
        except Exception as error:  # noqa: BLE001 - the jobs stay failed whatever ComfyUI says
            cleared.cancel_errors[job_id] = str(error) or type(error).__name__
    return cleared
