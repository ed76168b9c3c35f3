"""The launchpad's training config is derived from the declared options: same names, defaults and
help, and the run configs written against it before keep working."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dagster import DagsterInstance, Output, asset, materialize

from lora_pipeline.defs.partitions import CHARACTER_PARTITIONS_NAME, character_partitions
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource
from lora_pipeline.defs.training import TrainingRunConfig, trained_lora, training_options
from lora_pipeline.registry import commands
from lora_pipeline.training.options import RunOptions, TrainingConfig, launchpad_options

# The launchpad as users know it: renaming a field or changing a default breaks their saved run
# configs, so it is a decision made here, not a side effect of an edit in options.py.
LAUNCHPAD = {
    "epochs": None,
    "learning_rate": None,
    "resolution": None,
    "rank": None,
    "alpha": None,
    "batch_size": None,
    "max_steps": None,
    "seed": 0,
    "train_text_encoder": False,
    "text_encoder_lr": None,
    "conv_rank": 0,
    "conv_alpha": None,
    "optimizer": "adamw",
    "lr_scheduler": "constant",
    "lr_warmup_steps": 0,
    "mixed_precision": "auto",
    "gradient_checkpointing": False,
    "enable_bucket": True,
    "shuffle_caption": False,
    "keep_tokens": 1,
    "noise_offset": 0.0,
    "min_snr_gamma": None,
    "save_every_n_epochs": None,
    "keep_last_n_epochs": 2,
    "samples": True,
    "backend": "auto",
    "continue_from_failed": True,
    "scope": "project",
}


def _models() -> ModelsResource:
    return ModelsResource(base_model="tiny-model", device="cpu")


def test_the_run_config_has_exactly_the_declared_options() -> None:
    declared = {spec.name: spec for spec in launchpad_options()}
    fields = TrainingRunConfig.model_fields
    assert list(fields) == list(declared)
    for name, field in fields.items():
        assert field.default == declared[name].default, name
        assert field.description == declared[name].description, name
        assert field.annotation == declared[name].annotation, name


def test_every_option_has_one_line_of_help() -> None:
    for spec in launchpad_options():
        assert spec.description and "\n" not in spec.description, spec.name


def test_the_launchpad_keeps_its_field_names_and_defaults() -> None:
    schema = trained_lora.op.config_schema.config_type.fields
    assert {name: field.default_value for name, field in schema.items()} == LAUNCHPAD
    assert all(not field.is_required for field in schema.values())


def test_existing_run_configs_still_make_the_same_training_config() -> None:
    # The config the demo used to run with, as a studio would have saved it.
    saved = {"epochs": 2, "rank": 4, "alpha": 4.0, "learning_rate": 1e-3}
    run = TrainingRunConfig(**saved, samples=False, scope="baseline")
    config, options = training_options(run, _models().runtime())
    # The config folder of a single-file checkpoint is the models resource's business.
    assert replace(config, single_file_config=None) == TrainingConfig(
        base_model="tiny-model",
        device="cpu",
        epochs=2,
        rank=4,
        alpha=4.0,
        learning_rate=1e-3,
    )
    assert options == RunOptions(samples=False, scope="baseline")


def test_an_option_past_its_limit_fails_the_run_before_training(tmp_path: Path) -> None:
    @asset(name="shot_splits", partitions_def=character_partitions)
    def shot_splits() -> Output:
        return Output({"dataset": None, "split_relpath": "unused"})

    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(CHARACTER_PARTITIONS_NAME, ["aiko"])
    registry = RegistryResource(database_url=f"sqlite:///{tmp_path / 'r.db'}")
    with registry.get().session() as session:  # the checkpoint is the character's project's
        commands.add_project(session, "show", "Show")
        commands.add_character(session, "show", "aiko", "Aiko")
    bad = {"learning_rate": -1.0, "scope": "global"}
    result = materialize(
        [shot_splits, trained_lora],
        instance=instance,
        partition_key="aiko",
        run_config={"ops": {"trained_lora": {"config": bad}}},
        resources={
            "registry": registry,
            "data_root": DataRootResource(path=str(tmp_path / "data")),
            "models": _models(),
        },
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    description = failure.step_failure_data.user_failure_data.description
    assert description == (
        "invalid training options: learning_rate must be positive (got -1.0); "
        "scope must be one of project, baseline (got 'global')"
    )
