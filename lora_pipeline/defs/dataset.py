"""Dataset stages: the approved dataset version, its captions and its close/mid/far splits."""

from collections.abc import Iterator

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MetadataValue,
    Output,
    asset,
)

from lora_pipeline.dataset.quality import enough_images, files_match_manifest
from lora_pipeline.dataset.service import (
    DatasetRef,
    build_approved_dataset,
    caption_design,
    split_shots,
)
from lora_pipeline.dataset.versions import load_manifest
from lora_pipeline.defs.generation import generated_images
from lora_pipeline.defs.ingest import classified_frames
from lora_pipeline.defs.partitions import character_partitions
from lora_pipeline.defs.resources import DataRootResource, RegistryResource


@asset(
    partitions_def=character_partitions,
    group_name="dataset",
    deps=[classified_frames, generated_images],
    check_specs=[
        AssetCheckSpec("enough_approved_images", asset="approved_dataset", blocking=True),
        AssetCheckSpec("image_files_intact", asset="approved_dataset", blocking=True),
    ],
)
def approved_dataset(
    context: AssetExecutionContext, registry: RegistryResource, data_root: DataRootResource
) -> Iterator[Output | AssetCheckResult]:
    """An immutable dataset version of the approved images: manifest with sha256 and provenance,
    named by its hash. Blocks training below ten images or when a file changed."""
    root = data_root.get()
    ref = build_approved_dataset(registry.get(), root, context.partition_key)
    manifest = load_manifest(root.path(ref.relpath))
    yield Output(
        ref,
        metadata={
            "version_hash": ref.version_hash,
            "image_count": ref.image_count,
            "new_version": ref.created,
            "path": MetadataValue.path(str(root.path(ref.relpath))),
        },
    )
    for name, gate in (
        ("enough_approved_images", enough_images(manifest)),
        ("image_files_intact", files_match_manifest(root, manifest)),
    ):
        yield AssetCheckResult(
            check_name=name,
            passed=gate.passed,
            severity=AssetCheckSeverity.ERROR,
            description=gate.description,
            metadata={"problems": MetadataValue.json(gate.problems)},
        )


@asset(partitions_def=character_partitions, group_name="dataset")
def captions(
    context: AssetExecutionContext,
    approved_dataset: DatasetRef,
    registry: RegistryResource,
    data_root: DataRootResource,
) -> Output[dict]:
    """One caption per image: the trigger word, then the design prompt."""
    by_file = caption_design(registry.get(), data_root.get(), approved_dataset)
    sample = next(iter(by_file.values()), "")
    return Output(
        {"dataset": approved_dataset, "captions": by_file},
        metadata={"strategy": "design", "captions": len(by_file), "example": sample},
    )


@asset(partitions_def=character_partitions, group_name="dataset")
def shot_splits(
    context: AssetExecutionContext, captions: dict, data_root: DataRootResource
) -> Output[dict]:
    """close / mid / far folders in kohya layout with metadata.json and shots.json."""
    root = data_root.get()
    split = split_shots(root, captions["dataset"], captions["captions"], detector=None)
    for warning in split.warnings:
        context.log.warning(warning)
    return Output(
        {"dataset": captions["dataset"], "split_relpath": root.relative(split.directory)},
        metadata={
            "shot_distribution": MetadataValue.json(split.distribution),
            "face_detector": split.metadata.get("face_detector") or "none",
            "warnings": MetadataValue.json(split.warnings),
            "path": MetadataValue.path(str(split.directory)),
        },
    )
