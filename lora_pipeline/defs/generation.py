"""Generation stage: images of the character from its design prompt and settings."""

from dagster import (
    AssetExecutionContext,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from lora_pipeline.defs.gpu import gpu_op_tags, gpu_step
from lora_pipeline.defs.partitions import INTERACTIVE_GPU_POOL, character_partitions
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource
from lora_pipeline.generation.advisor import configured_advisors
from lora_pipeline.generation.service import (
    GenerationOutcome,
    GenerationPlan,
    generate_for_character,
)


class GenerationConfig(Config):
    """Launchpad settings; the rejection sensor fills `feedback_ids` for a regeneration (one
    new image per rejection; count and seed do not apply), the generation request sensor fills
    `job_ids` with the jobs requested in the review app or the CLI (then count, seed,
    prompt_override and extra_negative do not apply). An empty seed draws a fresh random seed
    per image, unless the character's seed is locked."""

    count: int = 4
    seed: int | None = None
    prompt_override: str | None = None
    extra_negative: str = ""
    feedback_ids: list[int] = []
    job_ids: list[int] = []


@asset(
    partitions_def=character_partitions,
    group_name="generation",
    # Images for review are what people wait for: their own pool, so that a yielding training
    # (which keeps its `gpu` slot) lets them through, and first to the GPU's lock.
    pool=INTERACTIVE_GPU_POOL,
    op_tags=gpu_op_tags("interactive"),
    kinds={"pytorch", "diffusers"},
)
def generated_images(
    context: AssetExecutionContext,
    config: GenerationConfig,
    registry: RegistryResource,
    data_root: DataRootResource,
    models: ModelsResource,
) -> MaterializeResult:
    """New pending images of the character; a regeneration carries the negatives of the
    rejections it answers."""
    plan = GenerationPlan(
        count=config.count,
        seed=config.seed,
        prompt_override=config.prompt_override,
        extra_negative=config.extra_negative,
        feedback_ids=tuple(config.feedback_ids),
        job_ids=tuple(config.job_ids),
        run_id=context.run_id,
    )
    # The checkpoint and templates of the character's project profile (else the settings').
    backends = models.runtime().backends(context.partition_key, registry.get())
    context.log.info(f"drawing with {backends.image.name} on checkpoint {backends.checkpoint}")
    with gpu_step(context, models, "interactive"):
        outcome = generate_for_character(
            registry.get(),
            data_root.get(),
            backends,
            context.partition_key,
            plan,
            context.log.info,
            advisors=configured_advisors(),
        )
    if outcome.duplicates:
        copies = outcome.duplicates.items()
        listed = ", ".join(f"{job} (copy of image {image})" for job, image in copies)
        context.log.warning(f"no new image from job(s) {listed}")
    if outcome.cleared_jobs:
        # Its work was taken away from it: the run did not do what it was asked to.
        raise Failure(_cleared_message(outcome.cleared_jobs), metadata=_metadata(config, outcome))
    if not outcome.image_ids and outcome.failed_jobs:
        raise RuntimeError(f"every generation job failed: {outcome.failed_jobs}")
    return MaterializeResult(metadata=_metadata(config, outcome))


def _cleared_message(job_ids: list[int]) -> str:
    if len(job_ids) == 1:
        return f"job {job_ids[0]} was cleared as stuck"
    return f"jobs {', '.join(map(str, job_ids))} were cleared as stuck"


def _metadata(config: GenerationConfig, outcome: GenerationOutcome) -> dict[str, object]:
    copies = {str(job): image for job, image in outcome.duplicates.items()}
    return {
        "images": MetadataValue.json(outcome.image_ids),
        "failed_jobs": MetadataValue.json(outcome.failed_jobs),
        # Job id → the existing image its output copied (no new image was made).
        "duplicate_jobs": MetadataValue.json(copies),
        "prompt": outcome.prompt,
        "negative_prompt": outcome.negative_prompt,
        "answers_feedback": MetadataValue.json(list(config.feedback_ids)),
        "requested_jobs": MetadataValue.json(list(config.job_ids)),
        "cleared_jobs": MetadataValue.json(outcome.cleared_jobs),
    }
