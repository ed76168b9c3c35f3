"""Set up a Dagster home and launch materialisations from the CLI and the demo."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from dagster import DagsterInstance, materialize

from lora_pipeline.config import export_dagster_home
from lora_pipeline.defs.partitions import CHARACTER_PARTITIONS_NAME, GPU_POOL

INSTANCE_FILES = resources.files("lora_pipeline") / "instance"


def prepare_dagster_home(home: Path, postgres: bool = False) -> Path:
    """Write dagster.yaml (unless the user has one) and limit the GPU pool to one slot."""
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists():
        name = "dagster-postgres.yaml" if postgres else "dagster.yaml"
        with resources.as_file(INSTANCE_FILES / name) as source:
            shutil.copyfile(source, target)
    with open_instance(home) as instance:
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, 1)
    return target


def open_instance(home: Path) -> DagsterInstance:
    # DagsterInstance.get() reads DAGSTER_HOME; set it so child processes agree.
    export_dagster_home(home)
    return DagsterInstance.get()


def ensure_partitions(instance: DagsterInstance, slugs: Sequence[str]) -> None:
    existing = set(instance.get_dynamic_partitions(CHARACTER_PARTITIONS_NAME))
    new = [s for s in slugs if s not in existing]
    if new:
        instance.add_dynamic_partitions(CHARACTER_PARTITIONS_NAME, new)


def materialize_partition(
    instance: DagsterInstance,
    partition: str,
    selection: Sequence[str],
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
    console_level: str = "WARNING",
) -> bool:
    """Materialise the selected assets of the code location for one character.

    The console shows warnings and errors only; the run's full log goes to the instance's event
    log, where the Dagster UI shows it.
    """
    from lora_pipeline.definitions import ASSETS, build_resources

    ensure_partitions(instance, [partition])
    result = materialize(
        ASSETS,
        selection=list(selection),
        partition_key=partition,
        instance=instance,
        resources=build_resources(),
        run_config={
            **(run_config or {}),
            "loggers": {"console": {"config": {"log_level": console_level}}},
        },
        tags=tags,
        raise_on_error=False,
    )
    return result.success
