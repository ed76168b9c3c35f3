"""Dataset stages: the approved dataset version, its captions and its close/mid/far splits.

Quality gates are asset checks. Blocking (they stop training when they fail): at least ten
approved images, files intact, images readable, every caption present; the minimum resolution
blocks only with LORA_PIPELINE_RESOLUTION_GATE=block (by default it warns, so the demo's 64-px
images train). Near-duplicates and the shot balance are warnings.
"""

from collections.abc import Iterator

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MetadataValue,
    Output,
    asset,
)

from lora_pipeline.config import Settings
from lora_pipeline.dataset.caption_strategies import DEFAULT_TAG_BLACKLIST
from lora_pipeline.dataset.quality import (
    GateResult,
    captions_complete,
    enough_images,
    files_match_manifest,
    minimum_resolution,
    no_near_duplicates,
    readable_images,
)
from lora_pipeline.dataset.selection import DatasetSelection
from lora_pipeline.dataset.service import (
    DatasetRef,
    build_approved_dataset,
    caption_version,
    character_info,
    scan_dataset,
    split_shots,
    taxonomy_for_project,
)
from lora_pipeline.dataset.versions import load_manifest
from lora_pipeline.defs.generation import generated_images
from lora_pipeline.defs.gpu import gpu_op_tags, gpu_step
from lora_pipeline.defs.ingest import classified_frames
from lora_pipeline.defs.partitions import GPU_POOL, character_partitions
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource


class ApprovedDatasetConfig(Config):
    """Selection rule and provenance of the version (seed 003); quality gate settings."""

    tags: list[str] = []
    tag_match: str = "all"
    provenance_source: str | None = None
    provenance_author: str | None = None
    provenance_license: str | None = None
    provenance_url: str | None = None
    provenance_notes: str | None = None
    min_short_side: int | None = None
    resolution_gate: str | None = None


class CaptionsConfig(Config):
    """Caption strategy and concept taxonomy; unset fields come from the settings."""

    strategy: str | None = None
    taxonomy: str | None = None
    tag_blacklist: list[str] | None = None
    include_character_tags: bool = False


def _first_set(*values):
    # An empty blacklist is a choice (keep every tag), unlike an unset one.
    return next(value for value in values if value is not None)


def _check(name: str, gate: GateResult, severity: AssetCheckSeverity) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=name,
        passed=gate.passed,
        severity=severity,
        description=gate.description,
        metadata={"problems": MetadataValue.json(gate.problems)},
    )


@asset(
    partitions_def=character_partitions,
    group_name="dataset",
    deps=[classified_frames, generated_images],
    check_specs=[
        AssetCheckSpec("enough_approved_images", asset="approved_dataset", blocking=True),
        AssetCheckSpec("image_files_intact", asset="approved_dataset", blocking=True),
        AssetCheckSpec("images_readable", asset="approved_dataset", blocking=True),
        AssetCheckSpec(
            "minimum_resolution",
            asset="approved_dataset",
            blocking=True,
            description="Blocks only when LORA_PIPELINE_RESOLUTION_GATE=block; warns otherwise.",
        ),
        AssetCheckSpec("no_near_duplicates", asset="approved_dataset", blocking=False),
    ],
)
def approved_dataset(
    context: AssetExecutionContext,
    config: ApprovedDatasetConfig,
    registry: RegistryResource,
    data_root: DataRootResource,
) -> Iterator[Output | AssetCheckResult]:
    """An immutable dataset version of the approved images (optionally filtered by tags):
    manifest with sha256 and provenance, named by its hash."""
    settings = Settings.current()
    root = data_root.get()
    provenance = {
        "source": config.provenance_source,
        "author": config.provenance_author,
        "license": config.provenance_license,
        "url": config.provenance_url,
        "notes": config.provenance_notes,
    }
    selection = DatasetSelection(tuple(config.tags), config.tag_match)
    ref = build_approved_dataset(
        registry.get(), root, context.partition_key, selection, provenance, run_id=context.run_id
    )
    manifest, scans = scan_dataset(root, ref)
    if not ref.created and any(provenance.values()):
        context.log.warning(
            f"dataset version {ref.version_hash[:12]} already existed: versions are immutable, "
            "so its first provenance is kept"
        )
    yield Output(
        ref,
        metadata={
            "version_hash": ref.version_hash,
            "image_count": ref.image_count,
            "new_version": ref.created,
            "selection": MetadataValue.json(manifest["provenance"].get("selection", {})),
            "provenance": MetadataValue.json(manifest["provenance"]),
            # Not "path": the IO manager writes its pickle's path under that key.
            "version_dir": MetadataValue.path(str(root.path(ref.relpath))),
        },
    )
    gate = (config.resolution_gate or settings.resolution_gate).lower()
    min_side = config.min_short_side or settings.min_short_side
    error = AssetCheckSeverity.ERROR
    yield _check("enough_approved_images", enough_images(manifest), error)
    yield _check("image_files_intact", files_match_manifest(root, manifest), error)
    yield _check("images_readable", readable_images(scans), error)
    yield _check(
        "minimum_resolution",
        minimum_resolution(scans, min_side),
        error if gate == "block" else AssetCheckSeverity.WARN,
    )
    yield _check("no_near_duplicates", no_near_duplicates(scans), AssetCheckSeverity.WARN)


@asset(
    partitions_def=character_partitions,
    group_name="dataset",
    check_specs=[AssetCheckSpec("captions_complete", asset="captions", blocking=True)],
    # The tagger and the VLM captioner run on the GPU.
    pool=GPU_POOL,
    op_tags=gpu_op_tags("batch"),
)
def captions(
    context: AssetExecutionContext,
    config: CaptionsConfig,
    approved_dataset: DatasetRef,
    registry: RegistryResource,
    data_root: DataRootResource,
    models: ModelsResource,
) -> Iterator[Output | AssetCheckResult]:
    """One caption per image: the trigger word, then the strategy's parts (design prompt,
    tagger tags, VLM caption); concepts from the project's taxonomy."""
    runtime = models.runtime()
    settings = runtime.settings
    root = data_root.get()
    strategy = config.strategy or settings.caption_strategy
    info = character_info(registry.get(), approved_dataset.character)
    wants = strategy.lower()
    with gpu_step(context, models, "batch"):
        caption_set = caption_version(
            registry.get(),
            root,
            approved_dataset,
            strategy=strategy,
            tagger=runtime.tagger() if "tags" in wants or "auto" in wants else None,
            captioner=runtime.captioner(info.project) if "vlm" in wants else None,
            taxonomy=taxonomy_for_project(config.taxonomy or settings.taxonomy, info.project),
            blacklist=_first_set(
                config.tag_blacklist, settings.tag_blacklist, DEFAULT_TAG_BLACKLIST
            ),
            include_character_tags=config.include_character_tags,
        )
    by_file = caption_set.captions
    yield Output(
        {"dataset": approved_dataset, "captions": by_file, "caption_set": caption_set},
        metadata={
            "strategy": caption_set.strategy,
            "captions": len(by_file),
            "example": next(iter(by_file.values()), ""),
            "tagger": caption_set.tagger or "none",
            "captioner": caption_set.captioner or "none",
            "taxonomy": caption_set.taxonomy,
            "absorbed_tags": MetadataValue.json(caption_set.absorbed_tags),
            "top_concepts": MetadataValue.json(caption_set.top_concepts),
        },
    )
    version_dir = root.path(approved_dataset.relpath)
    gate = captions_complete(version_dir, load_manifest(version_dir))
    yield _check("captions_complete", gate, AssetCheckSeverity.ERROR)


@asset(
    partitions_def=character_partitions,
    group_name="dataset",
    check_specs=[AssetCheckSpec("shot_balance", asset="shot_splits", blocking=False)],
    # The face detector that measures each shot runs on the GPU.
    pool=GPU_POOL,
    op_tags=gpu_op_tags("batch"),
)
def shot_splits(
    context: AssetExecutionContext,
    captions: dict,
    registry: RegistryResource,
    data_root: DataRootResource,
    models: ModelsResource,
) -> Iterator[Output | AssetCheckResult]:
    """close / mid / far folders in kohya layout with seed 002's JSON files, a dataset TOML
    with balanced num_repeats, and kohya/training configs with smart defaults."""
    root = data_root.get()
    dataset = captions["dataset"]
    # The checkpoint the character trains on: its project profile's, else the setting.
    runtime = models.runtime().for_character(dataset.character, registry.get())
    with gpu_step(context, models, "batch"):
        split = split_shots(
            root,
            dataset,
            captions["captions"],
            runtime.face_detector(),
            caption_set=captions.get("caption_set"),
            person=character_info(registry.get(), dataset.character).name,
            base_model=runtime.settings.base_model,
        )
    for warning in split.warnings:
        context.log.warning(warning)
    yield Output(
        {"dataset": dataset, "split_relpath": root.relative(split.directory)},
        metadata={
            "shot_distribution": MetadataValue.json(split.distribution),
            "face_detector": split.face_detector or "none",
            "warnings": MetadataValue.json(split.warnings),
            "num_repeats": MetadataValue.json(split.repeats),
            "top_concepts": MetadataValue.json(split.top_concepts),
            "training_defaults": MetadataValue.json(split.training),
            "dataset_dir": MetadataValue.path(str(split.directory)),
        },
    )
    if split.face_detector is None:
        description = "no face detector configured: every image is 'unknown', balance not judged"
    elif split.warnings:
        description = f"{len(split.warnings)} balance warning(s)"
    else:
        description = "close, mid and far shots are balanced"
    yield AssetCheckResult(
        check_name="shot_balance",
        passed=not split.warnings,
        severity=AssetCheckSeverity.WARN,
        description=description,
        metadata={
            "warnings": MetadataValue.json(split.warnings),
            "distribution": MetadataValue.json(split.distribution),
        },
    )
