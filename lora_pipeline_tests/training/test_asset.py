"""The real trained_lora asset on a Dagster instance: ComfyUI asked to free VRAM, the trainer in
a Pipes child process, per-epoch observations, the LoRA copied and registered as a candidate."""

from __future__ import annotations

from pathlib import Path

from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    Output,
    asset,
    materialize,
)
from safetensors import safe_open

from lora_pipeline.defs.partitions import CHARACTER_PARTITIONS_NAME, character_partitions
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource
from lora_pipeline.defs.training import trained_lora
from lora_pipeline.registry.models import LoraRelease
from lora_pipeline_tests.training.conftest import FakeComfyUI


def test_trained_lora_trains_in_a_child_and_registers_a_candidate(
    studio,
    tiny_sd: Path,
    tmp_path: Path,
    comfyui: str,  # noqa: ANN001, F811
) -> None:
    registry, root, dataset, split = studio

    @asset(name="shot_splits", partitions_def=character_partitions)
    def shot_splits() -> Output:
        return Output({"dataset": dataset, "split_relpath": split})

    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(CHARACTER_PARTITIONS_NAME, ["aiko"])
    loras = tmp_path / "comfyui" / "models" / "loras"
    run_config = {
        "ops": {
            "trained_lora": {
                "config": {
                    "epochs": 2,
                    "rank": 4,
                    "alpha": 4.0,
                    "learning_rate": 1e-3,
                    "scope": "baseline",
                }
            }
        }
    }
    result = materialize(
        [shot_splits, trained_lora],
        instance=instance,
        partition_key="aiko",
        run_config=run_config,
        resources={
            "registry": RegistryResource(database_url=registry.url),
            "data_root": DataRootResource(path=str(root.root)),
            "models": ModelsResource(
                base_model=str(tiny_sd),
                device="cpu",
                comfyui_url=comfyui,
                comfyui_loras_dir=str(loras),
            ),
        },
    )
    assert result.success
    assert ("/free", {"unload_models": True, "free_memory": True}) in FakeComfyUI.requests

    release = result.output_for_node("trained_lora")
    lora = root.path(release.relpath)
    assert (loras / lora.name).read_bytes() == lora.read_bytes()
    with safe_open(str(lora), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["lora_pipeline.dataset_hash"] == "d" * 64
    assert metadata["modelspec.trigger_phrase"] == "zkaiko"
    with registry.session() as session:
        row = session.get(LoraRelease, release.release_id)
        assert (row.status, row.scope) == ("candidate", "baseline")
        hyper = row.hyperparameters
    # run config values, and the smart defaults for the rest (5 images: batch 1; 32 px native)
    assert (hyper["epochs"], hyper["rank"], hyper["batch_size"], hyper["resolution"]) == (
        2,
        4,
        1,
        32,
    )
    assert hyper["backend"] == "builtin" and hyper["steps"] == release.steps == 10

    observations = [
        e.asset_observation_data.asset_observation
        for e in result.all_events
        if e.event_type == DagsterEventType.ASSET_OBSERVATION
    ]
    assert [o.metadata["epoch"].value for o in observations] == [1, 2]
    assert all(o.partition == "aiko" for o in observations)
    assert observations[0].metadata["sample"].value.startswith("![epoch 1 sample]")
    materialization = instance.get_latest_materialization_event(AssetKey("trained_lora"))
    shown = materialization.asset_materialization.metadata
    assert shown["steps"].value == 10 and len(shown["loss_curve"].value) == 10
    assert shown["hyperparameters"].value["resolution"] == 32
    assert shown["continued_from_release"].value == "none (fresh LoRA)"
    logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert any("asked ComfyUI" in m for m in logs)
    assert any(m.startswith("step 10/10 epoch 2/2") for m in logs)
