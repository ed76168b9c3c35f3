"""Evaluation stage: the best epoch's grid of prompts × seeds × LoRA strengths, its scores and
the gate verdict (an asset check), shown in the UI, and the release's model card."""

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

from lora_pipeline.defs.gpu import gpu_op_tags, gpu_step
from lora_pipeline.defs.metadata import image_markdown
from lora_pipeline.defs.partitions import GPU_POOL, character_partitions
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource
from lora_pipeline.evaluation.service import EvalRef, evaluate_release
from lora_pipeline.generation.comfyui import copy_to_comfyui
from lora_pipeline.training.service import ReleaseRef


@asset(
    partitions_def=character_partitions,
    group_name="evaluation",
    pool=GPU_POOL,
    op_tags=gpu_op_tags("batch"),
    kinds={"pytorch"},
    check_specs=[
        AssetCheckSpec(
            "release_gate",
            asset="eval_grid",
            description="The scores reach the project's thresholds; a release that fails "
            "cannot be approved or made active.",
        )
    ],
)
def eval_grid(
    context: AssetExecutionContext,
    trained_lora: ReleaseRef,
    registry: RegistryResource,
    data_root: DataRootResource,
    models: ModelsResource,
) -> Iterator[Output[EvalRef] | AssetCheckResult]:
    """Canonical prompts × fixed seeds, with a no-LoRA column, rendered with the release's best
    epoch; identity, CLIP, quality and LoRA-effect scores decide the gate."""
    root, runtime = data_root.get(), models.runtime()
    # Rendered on the checkpoint of the character's project profile, as its training was.
    renderer = runtime.backends(context.partition_key, registry.get()).image
    loras_dir = runtime.loras_dir() if runtime.comfyui_client() else None
    with gpu_step(context, models, "batch"):
        ref, result = evaluate_release(
            registry.get(),
            root,
            renderer,
            trained_lora.release_id,
            runtime.eval_scorers(),
            log=context.log.info,
            stage_lora=(lambda path: copy_to_comfyui(path, loras_dir)) if loras_dir else None,
        )
    yield Output(
        ref,
        metadata={
            "grid": image_markdown(result.grid, title=f"eval grid {context.partition_key}"),
            "grid_path": MetadataValue.path(str(root.path(ref.grid_relpath))),
            "model_card": MetadataValue.path(str(root.path(ref.model_card_relpath))),
            "release_id": ref.release_id,
            "verdict": ref.verdict,
            "best_epoch": ref.best_epoch if ref.best_epoch is not None else "single file",
            **{name: _score(value) for name, value in ref.scores.items()},
            "rows": MetadataValue.json(result.row_labels),
            "columns": MetadataValue.json(result.col_labels),
        },
    )
    yield AssetCheckResult(
        check_name="release_gate",
        passed=ref.verdict == "pass",
        # Unverified is not a failure: a reviewer may approve it with a recorded override.
        severity=(
            AssetCheckSeverity.WARN if ref.verdict == "unverified" else AssetCheckSeverity.ERROR
        ),
        description=(f"{ref.verdict}: " if ref.verdict != "pass" else "")
        + ("; ".join(ref.gate_reasons) or "every gated score reached its threshold"),
        metadata={
            "release_id": ref.release_id,
            "scores": MetadataValue.json(ref.scores),
            "reasons": MetadataValue.json(ref.gate_reasons),
        },
    )


def _score(value: float | None) -> float | str:
    return "not measured" if value is None else float(value)
