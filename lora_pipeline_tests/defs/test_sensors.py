"""Sensors turn registry events into exactly one run each (build_sensor_context)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context

from lora_pipeline.defs import sensors
from lora_pipeline.defs.resources import RegistryResource
from lora_pipeline.defs.sensors import (
    character_partitions_sensor,
    ingest_sensor,
    rejection_sensor,
)
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    reg = Registry(url)
    with reg.session() as session:
        commands.add_project(session, "demo", "Demo")
        commands.add_character(session, "demo", "aiko", "Aiko", design_prompt="teal hair")
        commands.add_character(session, "demo", "kenji", "Kenji", design_prompt="black hair")
    return reg


@pytest.fixture
def instance() -> DagsterInstance:
    with DagsterInstance.ephemeral() as instance:
        yield instance


def _evaluate(sensor, registry: Registry, instance: DagsterInstance, cursor: str | None = None):
    context = build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"registry": RegistryResource(database_url=registry.url)},
    )
    result = sensor(context)
    assert isinstance(result, SensorResult)
    return result


def _add_images(registry: Registry, slug: str, count: int, start: int = 0) -> list[int]:
    ids = []
    with registry.session() as session:
        character = commands.get_character(session, slug)
        for n in range(start, start + count):
            image, _ = commands.add_image(
                session,
                character.id,
                hashlib.sha256(f"{slug}{n}".encode()).hexdigest(),
                f"images/{slug}{n}.png",
                64,
                64,
                "generated",
            )
            ids.append(image.id)
    return ids


def test_character_sensor_adds_only_new_partitions(registry, instance) -> None:
    result = _evaluate(character_partitions_sensor, registry, instance)
    (request,) = result.dynamic_partitions_requests
    assert sorted(request.partition_keys) == ["aiko", "kenji"]
    instance.add_dynamic_partitions("character", ["aiko", "kenji"])
    with registry.session() as session:
        commands.add_character(session, "demo", "mio", "Mio")
    (request,) = _evaluate(
        character_partitions_sensor, registry, instance
    ).dynamic_partitions_requests
    assert list(request.partition_keys) == ["mio"]


def test_character_sensor_reads_only_characters_after_its_cursor(
    registry, instance, monkeypatch
) -> None:
    monkeypatch.setattr(sensors, "CHARACTERS_PER_TICK", 1)
    first = _evaluate(character_partitions_sensor, registry, instance)
    assert list(first.dynamic_partitions_requests[0].partition_keys) == ["aiko"]
    second = _evaluate(character_partitions_sensor, registry, instance, cursor=first.cursor)
    assert list(second.dynamic_partitions_requests[0].partition_keys) == ["kenji"]
    instance.add_dynamic_partitions("character", ["aiko", "kenji"])
    idle = _evaluate(character_partitions_sensor, registry, instance, cursor=second.cursor)
    assert idle.dynamic_partitions_requests == [] and idle.cursor == second.cursor
    with registry.session() as session:
        commands.add_character(session, "demo", "mio", "Mio")
    later = _evaluate(character_partitions_sensor, registry, instance, cursor=idle.cursor)
    assert list(later.dynamic_partitions_requests[0].partition_keys) == ["mio"]


def test_rejection_sensor_requests_one_regeneration_per_character(registry, instance) -> None:
    aiko = _add_images(registry, "aiko", 3)
    kenji = _add_images(registry, "kenji", 1)
    with registry.session() as session:
        f1 = commands.reject_image(session, aiko[0], ["wrong_style"]).id
        f2 = commands.reject_image(session, aiko[1], ["bad_quality"], notes="blurry").id
        f3 = commands.reject_image(session, kenji[0], ["not_solo"]).id
    result = _evaluate(rejection_sensor, registry, instance)
    runs = {r.partition_key: r for r in result.run_requests}
    assert set(runs) == {"aiko", "kenji"}
    assert runs["aiko"].run_key == f"regenerate-aiko-{f2}"
    config = runs["aiko"].run_config["ops"]["generated_images"]["config"]
    assert config["feedback_ids"] == [f1, f2]
    assert runs["kenji"].run_config["ops"]["generated_images"]["config"]["feedback_ids"] == [f3]
    assert result.cursor == str(f3)
    # The new partitions the runs need are requested in the same result.
    assert sorted(result.dynamic_partitions_requests[0].partition_keys) == ["aiko", "kenji"]

    again = _evaluate(rejection_sensor, registry, instance, cursor=result.cursor)
    assert again.run_requests == []
    with registry.session() as session:
        f4 = commands.reject_image(session, aiko[2], ["wrong_pose"]).id
    later = _evaluate(rejection_sensor, registry, instance, cursor=result.cursor)
    assert [r.run_key for r in later.run_requests] == [f"regenerate-aiko-{f4}"]


def test_rejection_sensor_carries_a_burst_over_ticks(registry, instance, monkeypatch) -> None:
    """A tick takes at most REJECTIONS_PER_TICK rejections; the next tick goes on from there
    and none is requested twice or skipped."""
    monkeypatch.setattr(sensors, "REJECTIONS_PER_TICK", 2)
    images = _add_images(registry, "aiko", 3) + _add_images(registry, "kenji", 2)
    with registry.session() as session:
        ids = [commands.reject_image(session, i, ["bad_quality"]).id for i in images]
    seen, cursor = [], None
    for _ in range(3):
        result = _evaluate(rejection_sensor, registry, instance, cursor=cursor)
        batch = [
            f
            for r in result.run_requests
            for f in r.run_config["ops"]["generated_images"]["config"]["feedback_ids"]
        ]
        assert len(batch) <= 2
        seen += batch
        cursor = result.cursor
    assert sorted(seen) == ids
    assert _evaluate(rejection_sensor, registry, instance, cursor=cursor).run_requests == []


def test_a_retried_tick_repeats_the_same_run_keys(registry, instance) -> None:
    """A tick that crashed before saving its cursor is evaluated again from the old cursor:
    the same run_keys come out, so Dagster launches nothing twice."""
    (image,) = _add_images(registry, "aiko", 1)
    with registry.session() as session:
        commands.reject_image(session, image, ["wrong_style"])
    first = _evaluate(rejection_sensor, registry, instance, cursor="0")
    retry = _evaluate(rejection_sensor, registry, instance, cursor="0")
    assert [r.run_key for r in first.run_requests] == [r.run_key for r in retry.run_requests]


def test_ingest_sensor_runs_each_source_once(registry, instance) -> None:
    with registry.session() as session:
        s1 = commands.create_source(
            session, "demo", "url", "https://example.invalid/v", character_slug="kenji"
        ).id
        s2 = commands.create_source(
            session, "demo", "url", "https://example.invalid/p", mode="project"
        ).id
    result = _evaluate(ingest_sensor, registry, instance)
    runs = {r.run_key: r for r in result.run_requests}
    assert set(runs) == {f"ingest-{s1}", f"ingest-{s2}"}
    assert runs[f"ingest-{s1}"].partition_key == "kenji"
    # Project mode: one run (the project's first character) classifies the frames once.
    assert runs[f"ingest-{s2}"].partition_key == "aiko"
    assert runs[f"ingest-{s1}"].run_config["ops"]["ingested_frames"]["config"] == {
        "source_ids": [s1]
    }
    assert _evaluate(ingest_sensor, registry, instance, cursor=result.cursor).run_requests == []


def _sources(registry: Registry, count: int, kind: str = "url") -> list[int]:
    with registry.session() as session:
        return [
            commands.create_source(
                session, "demo", kind, f"https://example.invalid/{kind}/{n}", character_slug="aiko"
            ).id
            for n in range(count)
        ]


def test_ingest_sensor_carries_a_backlog_over_ticks(registry, instance, monkeypatch) -> None:
    # At most SOURCES_PER_TICK sources a tick, each requested once, none skipped; the ComfyUI
    # output folder's sources are the other sensor's and never hold this one up.
    monkeypatch.setattr(sensors, "SOURCES_PER_TICK", 2)
    ids = _sources(registry, 2) + _sources(registry, 3, "comfyui_output") + _sources(registry, 3)
    ours = [i for n, i in enumerate(ids) if not 2 <= n < 5]
    seen, cursor = [], None
    for _ in range(3):
        result = _evaluate(ingest_sensor, registry, instance, cursor=cursor)
        assert len(result.run_requests) <= 2
        seen += [int(r.tags["lora_pipeline/source_id"]) for r in result.run_requests]
        cursor = result.cursor
    assert seen == ours
    assert _evaluate(ingest_sensor, registry, instance, cursor=cursor).run_requests == []


def test_generation_request_sensor_carries_on_past_the_stages_own_jobs(
    registry, instance, monkeypatch
) -> None:
    # A backlog of jobs the generation stage made itself (pending, never requests) does not
    # hold up the requests behind it: each tick reads JOBS_PER_TICK and moves past them.
    from lora_pipeline.generation.service import request_generation

    monkeypatch.setattr(sensors, "JOBS_PER_TICK", 2)
    with registry.session() as session:
        character = commands.get_character(session, "aiko")
        for seed in range(3):
            commands.create_generation_job(session, character.id, "p", "", seed, {})
        wanted = request_generation(session, "kenji", seed=7)[0].id
    requested, cursor = [], None
    for _ in range(2):
        result = _evaluate(sensors.generation_request_sensor, registry, instance, cursor=cursor)
        requested += [r.run_key for r in result.run_requests]
        cursor = result.cursor
    assert requested == [f"generate-kenji-{wanted}"]
    assert cursor == str(wanted)
