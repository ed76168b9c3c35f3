"""The code location loads and its asset graph is the one DESIGN §2 draws."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from dagster import AssetKey, DefaultScheduleStatus, DefaultSensorStatus, Definitions

import lora_pipeline
from lora_pipeline.definitions import defs
from lora_pipeline.defs.partitions import GPU_POOL, INTERACTIVE_GPU_POOL

EXPECTED_DEPS = {
    "ingested_frames": set(),
    "classified_frames": {"ingested_frames"},
    "generated_images": set(),
    "approved_dataset": {"classified_frames", "generated_images"},
    "captions": {"approved_dataset"},
    "shot_splits": {"captions"},
    "trained_lora": {"shot_splits"},
    "eval_grid": {"trained_lora"},
}
GPU_ASSETS = {
    "classified_frames",
    "generated_images",
    "captions",
    "shot_splits",
    "trained_lora",
    "eval_grid",
}


def test_definitions_load() -> None:
    Definitions.validate_loadable(defs)


def test_asset_graph_matches_design() -> None:
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == set(EXPECTED_DEPS)
    for name, parents in EXPECTED_DEPS.items():
        node = graph.get(AssetKey(name))
        assert {p.to_user_string() for p in node.parent_keys} == parents, name
        assert node.partitions_def.name == "character", name


def test_every_gpu_asset_is_in_a_gpu_pool() -> None:
    graph = defs.resolve_asset_graph()
    for name in EXPECTED_DEPS:
        pools = graph.get(AssetKey(name)).pools or set()
        expected = {INTERACTIVE_GPU_POOL if name == "generated_images" else GPU_POOL}
        assert pools == (expected if name in GPU_ASSETS else set()), name


def test_every_asset_that_loads_models_holds_the_gpu_for_them() -> None:
    """An asset given the models resource runs models (on the GPU where there is one), so it
    is one of the GPU assets above; test_pipeline sees each of them record its gpu_step."""
    for assets_def in defs.assets or []:
        compute = assets_def.op.compute_fn.decorated_fn
        if "models" in inspect.signature(compute).parameters:
            assert assets_def.key.to_user_string() in GPU_ASSETS, assets_def.key


def test_blocking_checks_guard_training() -> None:
    graph = defs.resolve_asset_graph()
    checks = {key.name: graph.get_check_spec(key) for key in graph.asset_check_keys}
    blocking = {name for name, spec in checks.items() if spec.blocking}
    assert blocking == {
        "enough_approved_images",
        "image_files_intact",
        "images_readable",
        "minimum_resolution",
        "captions_complete",
    }
    # The release gate does not block: the grid is what a reviewer looks at when it fails, and
    # the registry refuses to approve or activate the release.
    assert set(checks) - blocking == {"no_near_duplicates", "shot_balance", "release_gate"}


def test_sensors_and_schedules_are_on_by_default() -> None:
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {
        "character_partitions_sensor",
        "comfyui_output_sensor",
        "generation_request_sensor",
        "ingest_sensor",
        "rejection_sensor",
        "training_sensor",
    }
    assert all(s.default_status == DefaultSensorStatus.RUNNING for s in sensors.values())
    assert all(s.default_status == DefaultScheduleStatus.RUNNING for s in defs.schedules)


def test_readme_lists_every_sensor_and_schedule_by_its_name() -> None:
    readme = (Path(lora_pipeline.__file__).parent.parent / "README.md").read_text()
    section = readme.split("### Sensors and schedules", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))
    assert listed == {s.name for s in defs.sensors} | {s.name for s in defs.schedules}


def test_domain_packages_never_import_dagster() -> None:
    root = Path(lora_pipeline.__file__).parent
    domains = ["registry", "media", "vision", "dataset", "generation", "training", "evaluation"]
    offenders = []
    for domain in domains:
        for path in (root / domain).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                # dagster_pipes is the small protocol library made for child processes.
                names = [n for n in names if n != "dagster_pipes"]
                if any(n == "dagster" or n.startswith(("dagster.", "dagster_")) for n in names):
                    offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_root_dagster_yaml_is_the_packaged_one() -> None:
    repo = Path(lora_pipeline.__file__).parent.parent
    packaged = Path(lora_pipeline.__file__).parent / "instance"
    for name in ("dagster.yaml", "dagster-postgres.yaml"):
        assert (repo / name).read_text() == (packaged / name).read_text(), name
