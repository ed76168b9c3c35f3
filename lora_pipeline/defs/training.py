"""Training stage: a kohya-format LoRA, registered as a candidate release."""

from pathlib import Path

from dagster import AssetExecutionContext, Config, MetadataValue, Output, asset

from lora_pipeline.defs.partitions import GPU_POOL, character_partitions
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource
from lora_pipeline.training.service import ReleaseRef, train_character_lora
from lora_pipeline.training.trainer import TrainingConfig, TrainingProgress


class TrainingRunConfig(Config):
    """Overrides from the launchpad; the defaults suit the demo's tiny model."""

    max_steps: int | None = 40
    epochs: int = 1
    learning_rate: float = 1e-3
    rank: int = 4
    alpha: float = 4.0
    batch_size: int = 2
    resolution: int = 64
    seed: int = 0


@asset(
    partitions_def=character_partitions,
    group_name="training",
    pool=GPU_POOL,
    kinds={"pytorch", "safetensors"},
)
def trained_lora(
    context: AssetExecutionContext,
    config: TrainingRunConfig,
    shot_splits: dict,
    registry: RegistryResource,
    data_root: DataRootResource,
    models: ModelsResource,
) -> Output[ReleaseRef]:
    """A LoRA on the UNet trained on the shot splits, saved in kohya format (ComfyUI's
    LoraLoader applies every key), copied to the ComfyUI loras folder when one is set."""
    models.free_gpu()
    training = TrainingConfig(
        base_model=models.base_model_id(),
        rank=config.rank,
        alpha=config.alpha,
        learning_rate=config.learning_rate,
        max_steps=config.max_steps,
        epochs=config.epochs,
        batch_size=config.batch_size,
        resolution=config.resolution,
        seed=config.seed,
        device=models.device_name(),
        title=context.partition_key,
    )

    def report(progress: TrainingProgress) -> None:
        if progress.step == progress.total_steps or progress.step % 10 == 0:
            context.log.info(
                f"step {progress.step}/{progress.total_steps} epoch {progress.epoch} "
                f"loss {progress.loss:.4f} {progress.it_per_s:.2f} it/s eta {progress.eta_s:.0f}s"
            )

    loras_dir = models.loras_dir()
    release, result = train_character_lora(
        registry.get(),
        data_root.get(),
        shot_splits["dataset"],
        shot_splits["split_relpath"],
        training,
        on_progress=report,
        comfyui_loras_dir=Path(loras_dir) if loras_dir else None,
    )
    return Output(
        release,
        metadata={
            "release_id": release.release_id,
            "sha256": release.sha256,
            "steps": result.steps,
            "final_loss": result.final_loss,
            "seconds": round(result.seconds, 2),
            "loss_curve": MetadataValue.json([round(x, 5) for x in result.losses]),
            "path": MetadataValue.path(str(data_root.get().path(release.relpath))),
            "comfyui_copy": release.comfyui_copy or "not configured",
        },
    )
