"""Generate images of a character from its registry settings.

Each image is a generation job row (pending → running → completed/failed) and, on success, a
`pending` image carrying its parameters and the rejections it answers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from lora_pipeline.generation.backends import ImageBackend
from lora_pipeline.generation.local import GenerationRequest
from lora_pipeline.generation.negatives import merge_negative_prompt, negative_terms_for
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Character, Feedback

Log = Callable[[str], None]


@dataclass(frozen=True)
class GenerationPlan:
    count: int = 1
    seed: int | None = None
    prompt_override: str | None = None
    extra_negative: str = ""
    feedback_ids: tuple[int, ...] = ()


@dataclass
class GenerationOutcome:
    image_ids: list[int] = field(default_factory=list)
    failed_jobs: list[int] = field(default_factory=list)
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


def generate_for_character(
    registry: Registry,
    root: DataRoot,
    backend: ImageBackend,
    character_slug: str,
    plan: GenerationPlan,
    log: Log,
) -> GenerationOutcome:
    with registry.session() as session:
        character = commands.get_character(session, character_slug)
        feedback = [session.get(Feedback, i) for i in plan.feedback_ids]
        feedback = [f for f in feedback if f is not None and f.character_id == character.id]
        outcome = GenerationOutcome(
            prompt=plan.prompt_override or build_prompt(character),
            negative_prompt=build_negative_prompt(character, feedback, plan.extra_negative),
        )
        base_seed = plan.seed if plan.seed is not None else _seed_for(character)
        settings = _request_settings(character)
        character_id = character.id
    for offset in range(plan.count):
        request = GenerationRequest(
            prompt=outcome.prompt,
            negative_prompt=outcome.negative_prompt,
            seed=base_seed + offset,
            **settings,
        )
        _generate_one(registry, root, backend, character_id, request, plan, outcome, log)
    if plan.feedback_ids:
        with registry.session() as session:
            commands.mark_feedback_regeneration(session, list(plan.feedback_ids), "done")
    return outcome


def _seed_for(character: Character) -> int:
    # A fixed seed in the settings is honoured; otherwise a fresh one per run, like ComfyUI.
    return character.seed if character.seed is not None else random.randrange(2**31)


def _request_settings(character: Character) -> dict[str, object]:
    return {
        "steps": character.steps,
        "cfg": character.cfg,
        "sampler": character.sampler,
        "scheduler": character.scheduler,
        "width": character.width,
        "height": character.height,
    }


def _generate_one(
    registry: Registry,
    root: DataRoot,
    backend: ImageBackend,
    character_id: int,
    request: GenerationRequest,
    plan: GenerationPlan,
    outcome: GenerationOutcome,
    log: Log,
) -> None:
    params = asdict(request) | {"backend": backend.name}
    with registry.session() as session:
        job = commands.create_generation_job(
            session,
            character_id,
            request.prompt,
            request.negative_prompt,
            request.seed,
            params,
            backend=backend.name,
            feedback_ids=list(plan.feedback_ids),
        )
        commands.mark_job(session, job.id, "running")
        job_id = job.id
    try:
        image = backend.generate(request)
    except Exception as exc:  # noqa: BLE001 - any backend failure fails this job, not the run
        with registry.session() as session:
            commands.mark_job(session, job_id, "failed", error=str(exc).splitlines()[0][:500])
        outcome.failed_jobs.append(job_id)
        log(f"generation job {job_id} failed: {exc}")
        return
    stored = root.put_image(image)
    with registry.session() as session:
        row, _ = commands.add_image(
            session,
            character_id,
            stored.sha256,
            stored.relpath,
            stored.width,
            stored.height,
            "generated",
            provenance={"generation_job_id": job_id, "answers_feedback": list(plan.feedback_ids)},
            generation_job_id=job_id,
            generation_params=params,
        )
        commands.mark_job(session, job_id, "completed")
        outcome.image_ids.append(row.id)
    log(f"generated image {row.id} (seed {request.seed})")
