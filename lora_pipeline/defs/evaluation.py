"""Evaluation stage: a fixed grid of prompts × seeds × LoRA strengths, shown in the UI."""

from dagster import AssetExecutionContext, MetadataValue, Output, asset

from lora_pipeline.defs.metadata import image_markdown
from lora_pipeline.defs.partitions import GPU_POOL, character_partitions
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource
from lora_pipeline.evaluation.service import EvalRef, evaluate_release
from lora_pipeline.training.service import ReleaseRef


@asset(
    partitions_def=character_partitions,
    group_name="evaluation",
    pool=GPU_POOL,
    kinds={"pytorch"},
)
def eval_grid(
    context: AssetExecutionContext,
    trained_lora: ReleaseRef,
    registry: RegistryResource,
    data_root: DataRootResource,
    models: ModelsResource,
) -> Output[EvalRef]:
    """Canonical prompts × fixed seeds, with a no-LoRA column, rendered with the new LoRA."""
    root = data_root.get()
    ref, result = evaluate_release(
        registry.get(), root, models.generator(), trained_lora.release_id
    )
    context.log.info(f"eval {ref.eval_id}: lora effect {ref.lora_effect:.4f} → {ref.verdict}")
    return Output(
        ref,
        metadata={
            "grid": image_markdown(result.grid, title=f"eval grid {context.partition_key}"),
            "grid_path": MetadataValue.path(str(root.path(ref.grid_relpath))),
            "lora_effect": ref.lora_effect,
            "verdict": ref.verdict,
            "rows": MetadataValue.json(result.row_labels),
            "columns": MetadataValue.json(result.col_labels),
        },
    )
