"""The whole graph for one character on an SQLite Dagster instance, and the rejection loop."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, build_sensor_context
from safetensors import safe_open

from lora_pipeline.config import Settings
from lora_pipeline.definitions import ASSETS
from lora_pipeline.defs.instance import materialize_partition, open_instance, prepare_dagster_home
from lora_pipeline.defs.resources import RegistryResource
from lora_pipeline.defs.sensors import rejection_sensor, training_sensor
from lora_pipeline.generation.service import request_generation
from lora_pipeline.media.store import DataRoot
from lora_pipeline.media.uploads import store_upload
from lora_pipeline.media.video import make_synthetic_video
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.models import Image
from lora_pipeline.training.status import read_status, status_path
from lora_pipeline_tests.defs.test_definitions import GPU_ASSETS
from lora_pipeline_tests.generation.fake_comfyui import FakeComfyUI

ALL_ASSETS = [asset.key.to_user_string() for asset in ASSETS]
TRAINING = ALL_ASSETS[3:]

pytestmark = pytest.mark.slow


@pytest.fixture
def studio(project_home: Path) -> tuple[Settings, Registry, DagsterInstance]:
    settings = Settings.from_env()
    settings.ensure_dirs()
    migrate(settings.database_url)
    registry = Registry(settings.database_url)
    prepare_dagster_home(settings.dagster_home)
    with registry.session() as session:
        commands.add_project(session, "demo", "Demo", style_prompt="anime style")
        commands.add_character(
            session,
            "demo",
            "aiko",
            "Aiko",
            design_prompt="teal hair, yellow raincoat",
            negative_prompt="lowres",
            steps=2,
            cfg=5.0,
            width=64,
            height=64,
            seed=3,
        )
    with open_instance(settings.dagster_home) as instance:
        yield settings, registry, instance


def _ingest_video(settings: Settings, registry: Registry) -> int:
    video = make_synthetic_video(settings.home / "clip.mp4", seconds=8, scenes=4)
    upload = store_upload(video, DataRoot(settings.data_root))
    with registry.session() as session:
        return commands.create_source(
            session,
            "demo",
            upload.kind,
            upload.relpath,
            character_slug="aiko",
            fps=2.0,
            max_frames=16,
        ).id


def _materialised(instance: DagsterInstance, name: str) -> set[str]:
    return set(instance.get_materialized_partitions(AssetKey(name)))




def test_whole_graph_for_one_character(studio, monkeypatch) -> None:
    settings, registry, instance = studio
    monkeypatch.setenv("LORA_PIPELINE_TRAINING_SETTLE_S", "0")  # train once ten are approved
    source_id = _ingest_video(settings, registry)
    # Keep every distinct frame: this test needs ten images, not the dedupe of a real ingest.
    ingest = {"source_ids": [source_id], "near_duplicate_distance": -1, "static_threshold": -1}
    config = {"ops": {"ingested_frames": {"config": ingest}}}
    assert materialize_partition(instance, "aiko", ALL_ASSETS[:2], config)
    assert materialize_partition(
        instance,
        "aiko",
        ["generated_images"],
        {"ops": {"generated_images": {"config": {"count": 2}}}},
    )
    with registry.session() as session:
        pending = queries.pending_images(session, character_slug="aiko")
        origins = {image.origin for image in pending}
        assert origins == {"frame", "generated"}
        assert len(pending) >= 10, "the clip and generation give enough images to train"
        frame_image = next(i for i in pending if i.origin == "frame")
        assert frame_image.provenance["source_id"] == source_id
        assert "timestamp_s" in frame_image.provenance
        for image in pending:
            commands.approve_image(session, image.id, reviewer="test")

    context = build_sensor_context(
        instance=instance, resources={"registry": RegistryResource(database_url=registry.url)}
    )
    (run,) = training_sensor(context).run_requests
    small = {"epochs": 2, "rank": 4, "alpha": 4.0, "learning_rate": 1e-3, "samples": False}
    training = {"ops": {"trained_lora": {"config": small}}}
    assert materialize_partition(instance, "aiko", TRAINING, training, tags=run.tags)
    (trained,) = instance.get_runs(limit=1)
    for name in ALL_ASSETS:
        assert _materialised(instance, name) == {"aiko"}, name

    with registry.session() as session:
        character = commands.get_character(session, "aiko")
        release = queries.latest_release(session, character.id)
        version = queries.latest_dataset_version(session, character.id)
        assert release.status == "candidate"
        assert version.version_hash == run.tags["lora_pipeline/dataset_version"]
        assert release.dataset_version_id == version.id
        assert release.run_id == version.run_id == trained.run_id  # approved_dataset ran in it
    lora = settings.data_root / release.path
    with safe_open(str(lora), "pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert metadata["lora_pipeline.dataset_hash"] == version.version_hash
    grid = settings.data_root / "evals" / "aiko" / str(release.id) / "1" / "grid.png"
    assert grid.is_file()
    event = instance.get_latest_materialization_event(AssetKey("eval_grid"))
    metadata = event.asset_materialization.metadata
    assert metadata["grid"].value.startswith("![eval grid")
    assert metadata["verdict"].value in ("pass", "fail", "unverified")
    assert metadata["best_epoch"].value in (1, 2)  # the two saved epochs were compared
    assert Path(metadata["model_card"].value).is_file()
    # Every GPU step records the process's memory before and after its work.
    for name in GPU_ASSETS:
        event = instance.get_latest_materialization_event(AssetKey(name))
        memory = event.asset_materialization.metadata["gpu_step_memory"].value
        assert memory["before"]["rss_mb"] > 0 and memory["after"]["rss_mb"] > 0, name
        assert memory["after"]["peak_rss_mb"] > 0, name
    # What the review app shows of the training: its status file, written by the run worker
    # and the training child, ends trained at its last step, with the run that trained it.
    status = read_status(status_path(settings.data_root, "aiko"))
    assert status["state"] == "trained" and status["run_id"] == trained.run_id
    assert status["step"] == status["total_steps"] > 0
    # Trained: the sensor is quiet until the approved set changes.
    assert training_sensor(context).run_requests == []


def test_rejection_regenerates_with_the_negatives(studio) -> None:
    settings, registry, instance = studio
    assert materialize_partition(
        instance,
        "aiko",
        ["generated_images"],
        {"ops": {"generated_images": {"config": {"count": 1}}}},
    )
    with registry.session() as session:
        (image,) = queries.pending_images(session, character_slug="aiko")
        feedback = commands.reject_image(
            session,
            image.id,
            ["wrong_style", "bad_quality"],
            notes="too noisy",
            negative_terms=["wrong art style", "blurry", "low quality"],
        )
        feedback_id = feedback.id
    context = build_sensor_context(
        instance=instance, resources={"registry": RegistryResource(database_url=registry.url)}
    )
    (run,) = rejection_sensor(context).run_requests
    assert materialize_partition(instance, "aiko", ["generated_images"], run.run_config, run.tags)
    with registry.session() as session:
        (new,) = queries.pending_images(session, character_slug="aiko")
        assert new.provenance["answers_feedback"] == [feedback_id]
        negative = new.generation_params["negative_prompt"]
        assert negative == "lowres, wrong art style, blurry, low quality"
        assert session.get(Image, image.id).status == "rejected"


def test_generation_goes_through_comfyui_when_it_is_configured(
    studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, registry, instance = studio
    with FakeComfyUI() as fake:
        fake.custom_node_packs |= {"AnimateDiff-Evolved", "VideoHelperSuite"}  # for video
        monkeypatch.setenv("LORA_PIPELINE_COMFYUI_URL", fake.base_url)
        monkeypatch.setenv("LORA_PIPELINE_COMFYUI_CHECKPOINT", "random_sd15.safetensors")
        with registry.session() as session:
            [video_job] = request_generation(session, "aiko", kind="video", seed=4)
            job_ids = [video_job.id]
        config = {"ops": {"generated_images": {"config": {"count": 2, "seed": 10}}}}
        assert materialize_partition(instance, "aiko", ["generated_images"], config)
        requested = {"ops": {"generated_images": {"config": {"job_ids": job_ids}}}}
        assert materialize_partition(instance, "aiko", ["generated_images"], requested)
        sent = [p["prompt"] for p in fake.prompts]
    assert len(sent) == 3
    checkpoints = {
        node["inputs"]["ckpt_name"]
        for prompt in sent
        for node in prompt.values()
        if node["class_type"] == "CheckpointLoaderSimple"
    }
    assert checkpoints == {"random_sd15.safetensors"}
    with registry.session() as session:
        jobs = queries.generation_jobs(session)
        assert {(j.kind, j.backend, j.status) for j in jobs} == {
            ("image", "comfyui", "completed"),
            ("video", "comfyui", "completed"),
        }
        assert all(j.comfyui_prompt_id for j in jobs)
        video = next(j for j in jobs if j.kind == "video")
        assert (settings.data_root / video.params["output"]).is_file()
        assert len(queries.pending_images(session, character_slug="aiko")) == 2


def test_a_run_whose_job_was_cleared_as_stuck_fails_and_says_so(studio) -> None:
    settings, registry, instance = studio
    with registry.session() as session:
        [job] = request_generation(session, "aiko", seed=4)
        commands.mark_job(session, job.id, "running")
        commands.mark_job(session, job.id, "failed", error="stuck: cleared after 30 minutes")
    requested = {"ops": {"generated_images": {"config": {"job_ids": [job.id]}}}}
    assert not materialize_partition(instance, "aiko", ["generated_images"], requested)
    (run,) = instance.get_runs(limit=1)
    failures = [
        e for e in instance.all_logs(run.run_id) if e.dagster_event and e.dagster_event.is_failure
    ]
    messages = [e.dagster_event.step_failure_data.error.message for e in failures if e.step_key]
    assert any(f"job {job.id} was cleared as stuck" in m for m in messages), messages
    with registry.session() as session:
        assert queries.pending_images(session, character_slug="aiko") == []
