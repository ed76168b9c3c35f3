"""The scheduled jobs do their work against a real registry and data root."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from dagster import AssetKey, DagsterInstance
from PIL import Image

from lora_pipeline.dataset.service import build_approved_dataset
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource
from lora_pipeline.defs.schedules import (
    STUCK_AFTER,
    dataset_quality_job,
    nightly_quality_schedule,
    stuck_jobs_schedule,
    sweep_stuck_jobs_job,
)
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.models import GenerationJob, utcnow
from lora_pipeline_tests.generation.fake_comfyui import FakeComfyUI


def _registry(tmp_path: Path) -> Registry:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    registry = Registry(url)
    with registry.session() as session:
        commands.add_project(session, "demo", "Demo")
        commands.add_character(session, "demo", "aiko", "Aiko")
    return registry


def _resources(registry: Registry, root: Path, comfyui_url: str | None = None) -> dict:
    return {
        "registry": RegistryResource(database_url=registry.url),
        "data_root": DataRootResource(path=str(root)),
        "models": ModelsResource(comfyui_url=comfyui_url),
    }


def test_schedules_run_every_ten_minutes_and_nightly() -> None:
    assert stuck_jobs_schedule.cron_schedule == "*/10 * * * *"
    assert nightly_quality_schedule.cron_schedule == "0 3 * * *"


def test_stuck_jobs_are_marked_failed_and_stopped_in_comfyui(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    with registry.session() as session:
        character = commands.get_character(session, "aiko")
        old = commands.create_generation_job(session, character.id, "p", "", 1, {})
        fresh = commands.create_generation_job(session, character.id, "p", "", 2, {})
        commands.mark_job(session, old.id, "running")
        commands.set_job_prompt_id(session, old.id, "prompt-old")
        old.started_at = old.created_at = utcnow() - STUCK_AFTER - timedelta(minutes=1)
        old_id, fresh_id = old.id, fresh.id
    with FakeComfyUI() as fake:
        resources = _resources(registry, tmp_path, comfyui_url=fake.base_url)
        result = sweep_stuck_jobs_job.execute_in_process(resources=resources)
        assert fake.deleted == ["prompt-old"] and fake.interrupts == ["prompt-old"]
    assert result.success
    with registry.session() as session:
        assert session.get(GenerationJob, old_id).status == "failed"
        assert session.get(GenerationJob, fresh_id).status == "pending"


def test_nightly_check_fails_when_a_dataset_file_changed(tmp_path: Path) -> None:
    registry, root = _registry(tmp_path), DataRoot(tmp_path / "data")
    with registry.session() as session:
        character = commands.get_character(session, "aiko")
        stored = root.put_image(Image.new("RGB", (32, 32), (200, 10, 10)))
        image, _ = commands.add_image(
            session, character.id, stored.sha256, stored.relpath, 32, 32, "upload"
        )
        commands.approve_image(session, image.id)
    build_approved_dataset(registry, root, "aiko")
    resources = _resources(registry, root.root)
    assert dataset_quality_job.execute_in_process(resources=resources).success

    Image.new("RGB", (32, 32), (0, 0, 255)).save(root.path(stored.relpath))
    with DagsterInstance.ephemeral() as instance:
        result = dataset_quality_job.execute_in_process(
            resources=resources, instance=instance, raise_on_error=False
        )
        assert not result.success
        records = instance.fetch_observations(AssetKey("approved_dataset"), limit=5).records
    observation = records[0].asset_observation
    assert observation.partition == "aiko"
    assert observation.metadata["intact"].value is False
