"""The generation request sensor: pending jobs from the app → one run per character."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance, build_sensor_context

from lora_pipeline.defs.resources import RegistryResource
from lora_pipeline.defs.sensors import generation_request_sensor
from lora_pipeline.generation.service import request_generation
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    registry = Registry(url)
    with registry.session() as session:
        commands.add_project(session, "demo", "Demo")
        commands.add_character(session, "demo", "aiko", "Aiko", design_prompt="teal hair")
        commands.add_character(session, "demo", "kenji", "Kenji", design_prompt="black hair")
    return registry


def evaluate(registry: Registry, instance: DagsterInstance, cursor: str | None = None):
    context = build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"registry": RegistryResource(database_url=registry.url)},
    )
    return generation_request_sensor(context)


def test_one_run_per_character_with_its_jobs(registry: Registry) -> None:
    with registry.session() as session:
        aiko = [request_generation(session, "aiko", seed=n)[0].id for n in range(2)]
        kenji = request_generation(session, "kenji", kind="video")[0].id
        # A job the generation stage made itself is not a request.
        character = commands.get_character(session, "aiko")
        own = commands.create_generation_job(session, character.id, "p", "", 1, {}).id
    with DagsterInstance.ephemeral() as instance:
        result = evaluate(registry, instance)
        runs = {r.partition_key: r for r in result.run_requests}
        assert runs["aiko"].run_config["ops"]["generated_images"]["config"] == {"job_ids": aiko}
        assert runs["aiko"].run_key == f"generate-aiko-{aiko[-1]}"
        assert runs["kenji"].tags["lora_pipeline/job_ids"] == str(kenji)
        # The cursor passes the stage's own job too: it is never read again.
        assert result.cursor == str(own)
        assert sorted(result.dynamic_partitions_requests[0].partition_keys) == ["aiko", "kenji"]
        # Same cursor (a retried tick): the same run keys, so nothing runs twice.
        retry = evaluate(registry, instance)
        assert [r.run_key for r in retry.run_requests] == [r.run_key for r in result.run_requests]
        later = evaluate(registry, instance, result.cursor)
        assert later.run_requests == [] and later.cursor == result.cursor


def test_cleared_jobs_are_not_run(registry: Registry) -> None:
    with registry.session() as session:
        job = request_generation(session, "aiko")[0].id
        commands.mark_job(session, job, "failed", error="cleared")
    with DagsterInstance.ephemeral() as instance:
        assert evaluate(registry, instance).run_requests == []
