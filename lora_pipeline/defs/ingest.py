"""Ingest stage: sources → frames (ingested_frames) → frames sorted into characters."""

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from sqlalchemy import or_, select

from lora_pipeline.defs.partitions import GPU_POOL, character_partitions
from lora_pipeline.defs.resources import DataRootResource, RegistryResource
from lora_pipeline.media.ingest import ingest_source
from lora_pipeline.registry import commands
from lora_pipeline.registry.models import Source
from lora_pipeline.vision.classify import classify_character_sources


class IngestConfig(Config):
    """Which sources to ingest; empty means every pending source of the character."""

    source_ids: list[int] = []


def _pending_source_ids(registry, slug: str) -> list[int]:
    with registry.session() as session:
        character = commands.get_character(session, slug)
        query = select(Source.id).where(
            Source.state == "pending",
            Source.kind != "comfyui_output",
            or_(
                Source.character_id == character.id,
                (Source.mode == "project") & (Source.project_id == character.project_id),
            ),
        )
        return list(session.scalars(query.order_by(Source.id)))


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
    """Frames of the character's sources (URL, uploaded video or image), deduplicated, with
    provenance. A failed source is marked failed with its reason; the others go on."""
    reg, root = registry.get(), data_root.get()
    source_ids = config.source_ids or _pending_source_ids(reg, context.partition_key)
    outcomes = [ingest_source(reg, root, sid, context.log.info) for sid in source_ids]
    failed = {str(o.source_id): o.error for o in outcomes if o.state == "failed"}
    return MaterializeResult(
        metadata={
            "sources": len(outcomes),
            "sources_failed": MetadataValue.json(failed),
            "frames_seen": sum(o.stats.seen for o in outcomes),
            "frames_kept": sum(o.stats.kept for o in outcomes),
            "duplicates_dropped": sum(o.stats.duplicates for o in outcomes),
        }
    )


@asset(
    partitions_def=character_partitions,
    group_name="ingest",
    deps=[ingested_frames],
    pool=GPU_POOL,
    kinds={"pytorch"},
)
def classified_frames(
    context: AssetExecutionContext,
    registry: RegistryResource,
    data_root: DataRootResource,
) -> MaterializeResult:
    """Each frame checked once for which characters it shows; recognised frames become pending
    images of those characters, the rest are skipped."""
    stats = classify_character_sources(
        registry.get(), data_root.get(), context.partition_key, None, context.log.info
    )
    return MaterializeResult(
        metadata={
            "frames_classified": stats.frames_classified,
            "frames_already_classified": stats.frames_cached,
            "images_added": stats.images_added,
            "skipped": stats.skipped,
            "per_character": MetadataValue.json(stats.per_character),
        }
    )
