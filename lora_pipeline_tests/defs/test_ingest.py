"""The ingest assets and sensors through Dagster: URL, project mode, the ComfyUI folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DefaultSensorStatus, build_sensor_context

from lora_pipeline.config import Settings
from lora_pipeline.definitions import defs
from lora_pipeline.defs.instance import materialize_partition
from lora_pipeline.defs.resources import RegistryResource
from lora_pipeline.defs.sensors import comfyui_output_sensor, ingest_sensor
from lora_pipeline.media.store import DataRoot
from lora_pipeline.media.uploads import store_upload
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.models import Source
from lora_pipeline_tests.media.conftest import (  # noqa: F401 - fixtures
    LocalServer,
    http_server,
    synthetic_video,
)
from lora_pipeline_tests.media.test_comfyui_outputs import _graph, write_output
from lora_pipeline_tests.vision.cast import (
    AIKO,
    COLUMN,
    HEAD_THRESHOLD,
    KENJI,
    PERSON_THRESHOLD,
    STRANGER,
    build_detectors,
    draw_frame,
)
from lora_pipeline_tests.vision.fake_ollama import fake_ollama
from lora_pipeline_tests.vision.test_classify import SCENES, make_video

INGEST = ["ingested_frames", "classified_frames"]


@pytest.fixture
def studio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, Registry, DagsterInstance]]:
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(tmp_path / "home"))
    for name in ("DATABASE_URL", "DATA_ROOT", "IDENTIFIER", "COMFYUI_OUTPUT_DIR", "MIN_SIDE"):
        monkeypatch.delenv(f"LORA_PIPELINE_{name}", raising=False)
    settings = Settings.from_env()
    settings.ensure_dirs()
    migrate(settings.database_url)
    registry = Registry(settings.database_url)
    with registry.session() as session:
        commands.add_project(session, "demo", "Demo")
        commands.add_character(session, "demo", "aiko", "Aiko", design_prompt="red coat")
        commands.add_character(session, "demo", "kenji", "Kenji", design_prompt="blue coat")
    with DagsterInstance.ephemeral() as instance:
        yield settings, registry, instance
    registry.dispose()


def _metadata(instance: DagsterInstance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _config(source_ids: list[int], **ingest: object) -> dict:
    return {"ops": {"ingested_frames": {"config": {"source_ids": source_ids, **ingest}}}}


def test_url_source_through_the_assets(studio, http_server: LocalServer) -> None:  # noqa: F811
    settings, registry, instance = studio
    with registry.session() as session:
        good = commands.create_source(
            session, "demo", "url", http_server.url("clip.mp4"), "aiko", fps=2.0, max_frames=8
        ).id
        bad = commands.create_source(session, "demo", "url", http_server.url("gone.mp4"), "aiko").id
    # The clip is 160x120: this run accepts small frames.
    assert materialize_partition(instance, "aiko", INGEST, _config([good, bad], min_side=64))
    ingested = _metadata(instance, "ingested_frames")
    assert ingested["sources"] == 2 and ingested["frames_seen"] == 8
    assert ingested["sources_failed"] == {
        str(bad): "cannot download " + http_server.url("gone.mp4") + ": not found (HTTP 404)"
    }
    kept = ingested["frames_kept"]
    assert 4 <= kept <= 8
    assert kept + ingested["near_duplicates_dropped"] + ingested["static_dropped"] == 8
    assert ingested["contact_sheet"].startswith("![kept frames](data:image/png;base64,")
    classified = _metadata(instance, "classified_frames")
    assert classified["per_character"] == {"aiko": kept}
    assert classified["identifier"].startswith("source character")
    assert classified["contact_sheet"].startswith("![images added]")
    with registry.session() as session:
        pending = queries.pending_images(session, character_slug="aiko")
        assert len(pending) == kept
        assert {i.provenance["video_id"] for i in pending} == {"clip"}

    # Running the same request again adds nothing.
    assert materialize_partition(instance, "aiko", INGEST, _config([good], min_side=64))
    assert _metadata(instance, "ingested_frames")["sources_already_done"] == 1
    assert _metadata(instance, "classified_frames")["images_added"] == 0


def test_project_mode_sorts_into_two_characters(
    studio, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings, registry, instance = studio
    video = make_video(tmp_path / "scenes.mp4", SCENES)
    upload = store_upload(video, DataRoot(settings.data_root))
    with registry.session() as session:
        source = commands.create_source(
            session, "demo", upload.kind, upload.relpath, mode="project", fps=1.0
        )
    with fake_ollama() as server:
        monkeypatch.setenv("LORA_PIPELINE_IDENTIFIER", f"ollama:{server.url}#llava:13b")
        assert materialize_partition(instance, "aiko", INGEST, _config([source.id]))
    classified = _metadata(instance, "classified_frames")
    assert classified["identifier"] == "ollama:llava:13b"
    # The frame showing both goes into neither dataset (whole frames are not asked for).
    assert classified["per_character"] == {"aiko": 1, "kenji": 1}
    assert classified["multi_character_frames_left_out"] == 1
    assert classified["skipped"] == 1 and classified["frames_classified"] == 4


def test_project_mode_crops_each_character_with_the_person_detector(
    studio, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings, registry, instance = studio
    # Six columns: the tiny detector's [1, 5, 6] output reads as YOLOv8 columns unaided.
    persons, heads = build_detectors(tmp_path / "detectors", width=6 * COLUMN)
    frame = tmp_path / "both.png"
    draw_frame([(0, AIKO), (2, KENJI), (4, STRANGER)], width=6 * COLUMN).save(frame)
    upload = store_upload(frame, DataRoot(settings.data_root))
    with registry.session() as session:
        source = commands.create_source(
            session, "demo", upload.kind, upload.relpath, mode="project"
        )
    for name, value in (
        ("PERSON_DETECTOR", persons), ("PERSON_THRESHOLD", PERSON_THRESHOLD),
        ("HEAD_DETECTOR", heads), ("HEAD_THRESHOLD", HEAD_THRESHOLD),
    ):  # fmt: skip
        monkeypatch.setenv(f"LORA_PIPELINE_{name}", str(value))
    with fake_ollama() as server:
        monkeypatch.setenv("LORA_PIPELINE_IDENTIFIER", f"ollama:{server.url}#llava:13b")
        assert materialize_partition(instance, "aiko", INGEST, _config([source.id]))
    classified = _metadata(instance, "classified_frames")
    assert classified["persons_detected"] == 3 and classified["crops_added"] == 2
    # Neither has shots yet: each gets its upper-body and head crops too.
    assert classified["crops_derived"] == 4 and classified["crops_unrecognised"] == 1
    assert classified["per_character"] == {"aiko": 3, "kenji": 3}
    assert "contact_sheet" in classified
    assert "candidate_characters" not in classified  # no identity model: nothing clustered


def test_project_mode_without_identifier_fails_the_run_clearly(studio, tmp_path: Path) -> None:
    settings, registry, instance = studio
    upload = store_upload(make_video(tmp_path / "s.mp4", SCENES[:1]), DataRoot(settings.data_root))
    with registry.session() as session:
        source = commands.create_source(
            session, "demo", upload.kind, upload.relpath, mode="project"
        )
    assert not materialize_partition(instance, "aiko", INGEST, _config([source.id]))
    with registry.session() as session:
        assert session.get(Source, source.id).state == "done"  # frames wait for a model


def test_comfyui_output_sensor(studio, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings, registry, instance = studio
    resources = {"registry": RegistryResource(database_url=registry.url)}
    context = build_sensor_context(instance=instance, resources=resources)
    skipped = comfyui_output_sensor(context)
    assert "LORA_PIPELINE_COMFYUI_OUTPUT_DIR" in skipped.skip_reason.skip_message

    folder = tmp_path / "comfyui" / "output"
    monkeypatch.setenv("LORA_PIPELINE_COMFYUI_OUTPUT_DIR", str(folder))
    write_output(folder, "aiko_00001_.png", _graph())
    write_output(folder, "aiko_00002_.png")
    write_output(folder, "kenji_00001_.png")
    result = comfyui_output_sensor(build_sensor_context(instance=instance, resources=resources))
    runs = {r.partition_key: r for r in result.run_requests}
    assert set(runs) == {"aiko", "kenji"}
    aiko_ids = runs["aiko"].run_config["ops"]["ingested_frames"]["config"]["source_ids"]
    assert (
        len(aiko_ids) == 2 and runs["aiko"].run_key == f"comfyui-aiko-{aiko_ids[0]}-{aiko_ids[1]}"
    )
    # The next tick: nothing new, and the files are not registered again (even after a restart).
    later = comfyui_output_sensor(
        build_sensor_context(instance=instance, cursor=result.cursor, resources=resources)
    )
    assert later.run_requests == []
    with registry.session() as session:
        assert session.query(Source).count() == 3
    # The ingest sensor leaves ComfyUI sources to this sensor.
    assert (
        ingest_sensor(build_sensor_context(instance=instance, resources=resources)).run_requests
        == []
    )

    run = runs["aiko"]
    assert materialize_partition(instance, "aiko", INGEST, run.run_config, run.tags)
    with registry.session() as session:
        images = queries.pending_images(session, character_slug="aiko")
    assert [i.origin for i in images] == ["comfyui", "comfyui"]
    assert images[0].generation_params["checkpoint"] == "random_sd15.safetensors"
    assert images[1].generation_params is None


def test_comfyui_sensor_is_registered_and_running() -> None:
    sensors = {s.name: s for s in defs.sensors}
    assert sensors["comfyui_output_sensor"].default_status == DefaultSensorStatus.RUNNING
