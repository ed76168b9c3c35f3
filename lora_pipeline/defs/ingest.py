"""Ingest stage: sources → frames (ingested_frames) → frames sorted into characters."""

from pathlib import Path

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from lora_pipeline.config import Settings
from lora_pipeline.defs.gpu import gpu_op_tags, gpu_step
from lora_pipeline.defs.metadata import image_markdown
from lora_pipeline.defs.partitions import GPU_POOL, character_partitions
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource
from lora_pipeline.media.contact_sheet import contact_sheet
from lora_pipeline.media.frames import FrameFilters, FrameStats
from lora_pipeline.media.images import InvalidImageError, load_image
from lora_pipeline.media.ingest import IngestOptions, ingest_source
from lora_pipeline.media.store import DataRoot
from lora_pipeline.media.uploads import sweep_incoming
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.vision.classify import (
    ClassificationStats,
    ClassifyOptions,
    classify_character_sources,
    registry_references,
)
from lora_pipeline.vision.clustering import cluster_project
from lora_pipeline.vision.identification import Identifier
from lora_pipeline.vision.identifier_factory import build_identifier

CONTACT_SHEET_IMAGES = 16


class IngestConfig(Config):
    """Which sources to ingest (empty: every pending source of the character), and filter
    settings for this run; unset filter fields take the LORA_PIPELINE_* settings, -1 turns a
    filter off."""

    source_ids: list[int] = []
    near_duplicate_distance: int | None = None
    static_threshold: float | None = None
    min_sharpness: float | None = None
    min_side: int | None = None
    # Where ComfyUI output sources' files are, when not the configured folder.
    comfyui_output_dir: str | None = None


class ClassifyConfig(Config):
    """The identifier for this run (llava:<model>, ollama:<url>#<model>, reference:<model>);
    unset takes the project's configured one."""

    identifier: str | None = None


def _off_if_negative(value):
    return None if value is not None and value < 0 else value


def frame_filters(settings: Settings, config: IngestConfig) -> FrameFilters:
    def pick(name: str):
        value = getattr(config, name)
        return _off_if_negative(getattr(settings, name) if value is None else value)

    return FrameFilters(
        static_threshold=pick("static_threshold"),
        near_duplicate_distance=pick("near_duplicate_distance"),
        min_sharpness=pick("min_sharpness"),
        min_side=max(1, pick("min_side") or 1),
    )


def _pending_source_ids(registry: Registry, slug: str) -> list[int]:
    with registry.session(readonly=True) as session:
        return queries.pending_source_ids(session, slug)


def _sheet_metadata(root: DataRoot, paths: list[str], title: str) -> dict:
    images = []
    for path in paths[:CONTACT_SHEET_IMAGES]:
        try:
            images.append(load_image(root.path(path)))
        except InvalidImageError:
            continue
    return {"contact_sheet": image_markdown(contact_sheet(images), title)} if images else {}


def _frame_paths(registry: Registry, frame_ids: list[int]) -> list[str]:
    with registry.session(readonly=True) as session:
        return queries.frame_paths(session, frame_ids[: CONTACT_SHEET_IMAGES * 4])


@asset(
    partitions_def=character_partitions,
    group_name="ingest",
    kinds={"ffmpeg", "yt-dlp"},
)
def ingested_frames(
    context: AssetExecutionContext,
    config: IngestConfig,
    registry: RegistryResource,
    data_root: DataRootResource,
) -> MaterializeResult:
    """Frames of the character's sources (URL, uploaded video or image, ComfyUI output file),
    without repeats: exact duplicates, a static shot's copies and near-duplicates of the stream
    or of the character's dataset are dropped, with blurry and tiny frames. Each kept frame
    has its provenance. A failed source is marked failed with its reason; the others go on."""
    reg, root, settings = registry.get(), data_root.get(), Settings.current()
    comfyui_dir = config.comfyui_output_dir or settings.comfyui_output_dir
    options = IngestOptions(
        filters=frame_filters(settings, config),
        comfyui_output_dir=Path(comfyui_dir) if comfyui_dir else None,
        stall_s=settings.download_stall_s,
        # Recorded on each source: the stuck-job schedule fails those whose run died.
        run_id=context.run_id,
    )
    sweep_incoming(root)
    source_ids = config.source_ids or _pending_source_ids(reg, context.partition_key)
    outcomes = [ingest_source(reg, root, sid, context.log.info, options) for sid in source_ids]
    total = FrameStats()
    for outcome in outcomes:
        total.add(outcome.stats)
    failed = {str(o.source_id): o.error for o in outcomes if o.state == "failed"}
    kept_paths = _frame_paths(reg, [fid for o in outcomes for fid in o.frame_ids])
    return MaterializeResult(
        metadata={
            "sources": len(outcomes),
            "sources_already_done": sum(o.already_done for o in outcomes),
            "sources_failed": MetadataValue.json(failed),
            **total.metadata(),
            **_sheet_metadata(root, kept_paths, "kept frames"),
        }
    )


def project_identifier(
    registry: Registry, root: DataRoot, settings: Settings, slug: str, override: str | None
) -> Identifier | None:
    """The identifier configured for the character's project (or given for this run)."""
    with registry.session(readonly=True) as session:
        project = commands.get_character(session, slug).project
        project_slug, project_settings = project.slug, dict(project.settings or {})
    spec = override or settings.identifier_for(project_slug)
    if not spec:
        return None
    # The project's own match threshold, else the studio's.
    threshold = project_settings.get("match_threshold")
    return build_identifier(
        spec,
        device=settings.device,
        references=registry_references(registry, root),
        reference_threshold=settings.reference_threshold if threshold is None else threshold,
        cache_dir=root.dir("cache", "embeddings"),
    )


def classify_options(models: ModelsResource, settings: Settings) -> ClassifyOptions:
    """Near-duplicate distance, and the person/head detectors that crop each character."""
    runtime = models.runtime()
    return ClassifyOptions(
        near_duplicate_distance=_off_if_negative(settings.near_duplicate_distance),
        persons=runtime.person_detector(),
        heads=runtime.head_detector(),
        crop_margin=settings.crop_margin,
        whole_frames=settings.whole_frames,
    )


@asset(
    partitions_def=character_partitions,
    group_name="ingest",
    deps=[ingested_frames],
    pool=GPU_POOL,
    op_tags=gpu_op_tags("batch"),
    kinds={"pytorch"},
)
def classified_frames(
    context: AssetExecutionContext,
    config: ClassifyConfig,
    registry: RegistryResource,
    data_root: DataRootResource,
    models: ModelsResource,
) -> MaterializeResult:
    """Each frame checked once for which characters it shows; recognised frames become pending
    images of those characters (unless they nearly repeat one), the rest are skipped. With a
    person detector each person is cropped and identified alone (crops per character, three-
    stage crops for missing shot types with a head detector); a whole frame of several
    characters goes into no dataset unless whole frames are asked for."""
    reg, root, settings = registry.get(), data_root.get(), models.settings()
    with gpu_step(context, models, "batch"):
        identifier = project_identifier(
            reg, root, settings, context.partition_key, config.identifier
        )
        try:
            stats = classify_character_sources(
                reg,
                root,
                context.partition_key,
                identifier,
                context.log.info,
                classify_options(models, settings),
            )
        finally:
            close = getattr(identifier, "close", None)
            if close is not None:
                close()
        clustered = _cluster_unrecognised(context, reg, root, models, stats)
    return MaterializeResult(
        metadata={
            "identifier": identifier.name if identifier else "source character (none configured)",
            "frames_classified": stats.frames_classified,
            "frames_already_classified": stats.frames_cached,
            "frames_answer_reused": stats.frames_reused,
            "images_added": stats.images_added,
            "skipped": stats.skipped,
            "near_duplicates_dropped": stats.near_duplicates,
            "per_character": MetadataValue.json(stats.per_character),
            "multi_character_frames_left_out": stats.multi_character_frames,
            "persons_detected": stats.persons_detected,
            "crops_added": stats.crops_added,
            "crops_not_solo": stats.crops_not_solo,
            "crops_derived": stats.crops_derived,
            "crops_ambiguous": stats.crops_ambiguous,
            "crops_unrecognised": len(stats.unrecognised),
            **clustered,
            **_sheet_metadata(root, stats.added_paths, "images added"),
        }
    )


def _cluster_unrecognised(
    context: AssetExecutionContext,
    registry: Registry,
    root: DataRoot,
    models: ModelsResource,
    stats: ClassificationStats,
) -> dict:
    """New unrecognised crops re-cluster the project (with the identity model, when set)."""
    embedder = models.runtime().identity_embedder() if stats.unrecognised else None
    if embedder is None:
        return {}
    with registry.session(readonly=True) as session:
        project = commands.get_character(session, context.partition_key).project.slug
    found = cluster_project(registry, root, project, embedder, context.log.info)
    return {
        "crops_clustered": found.crops - found.noise,
        "candidate_characters": found.clusters,
        "new_candidates": found.new_candidates,
    }
