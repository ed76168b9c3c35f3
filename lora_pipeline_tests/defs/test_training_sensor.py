"""The training sensor starts a training once, when it should (build_sensor_context): ten
approved images, a set that has settled, at most one queued and one running per character,
and a skip reason that says why each character waits."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, SensorResult, build_sensor_context
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test

from lora_pipeline.dataset.versions import dataset_fingerprint
from lora_pipeline.defs.resources import RegistryResource
from lora_pipeline.defs.sensors import training_sensor
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.models import Image, utcnow


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


@pytest.fixture
def no_settling(monkeypatch) -> None:
    monkeypatch.setenv("LORA_PIPELINE_TRAINING_SETTLE_S", "0")


def evaluate(registry: Registry, instance: DagsterInstance) -> SensorResult:
    context = build_sensor_context(
        instance=instance, resources={"registry": RegistryResource(database_url=registry.url)}
    )
    result = training_sensor(context)
    assert isinstance(result, SensorResult)
    return result


def skip_reason(result: SensorResult) -> str:
    assert result.run_requests == []
    return result.skip_reason.skip_message


def approve(registry: Registry, count: int, start: int = 0, slug: str = "aiko") -> None:
    with registry.session() as session:
        character = commands.get_character(session, slug)
        for n in range(start, start + count):
            digest = hashlib.sha256(f"{slug}{n}".encode()).hexdigest()
            image, _ = commands.add_image(
                session, character.id, digest, f"images/{slug}{n}.png", 64, 64, "generated"
            )
            commands.approve_image(session, image.id)


def reviewed_ago(registry: Registry, minutes: float) -> None:
    """As if every decision so far was made `minutes` ago."""
    with registry.session() as session:
        for image in session.query(Image):
            image.reviewed_at = utcnow() - timedelta(minutes=minutes)


def version_of(registry: Registry, slug: str = "aiko") -> str:
    with registry.session() as session:
        character = commands.get_character(session, slug)
        pairs = [(i.id, i.sha256) for i in queries.approved_images(session, character.id)]
    return dataset_fingerprint(slug, pairs)


def training_run(instance: DagsterInstance, version: str, status, by_sensor: bool = True):
    tags = {"dagster/partition": "aiko", "lora_pipeline/dataset_version": version}
    if by_sensor:
        tags["dagster/sensor_name"] = "training_sensor"
    if status != DagsterRunStatus.QUEUED:
        return create_run_for_test(instance, job_name="training_job", status=status, tags=tags)
    # As the queued run coordinator does: a new run, then its enqueued event.
    repository = RemoteRepositoryOrigin(
        RegisteredCodeLocationOrigin("lora_pipeline"), "__repository__"
    )
    origin = repository.get_job_origin("training_job")
    run = create_run_for_test(
        instance, job_name="training_job", tags=tags, remote_job_origin=origin
    )
    enqueued = DagsterEvent(DagsterEventType.RUN_ENQUEUED.value, job_name="training_job")
    instance.report_dagster_event(enqueued, run_id=run.run_id)
    return instance.get_run_by_id(run.run_id)


def test_each_character_says_why_it_waits(registry, instance, no_settling) -> None:
    approve(registry, 8)
    assert skip_reason(evaluate(registry, instance)) == "aiko: 8/10 approved; kenji: 0/10 approved"


def test_ten_approved_images_train_once_per_set(registry, instance, no_settling) -> None:
    approve(registry, 10)
    version = version_of(registry)
    (run,) = evaluate(registry, instance).run_requests
    assert run.partition_key == "aiko"
    assert run.tags["lora_pipeline/dataset_version"] == version
    retried = evaluate(registry, instance).run_requests
    assert [r.run_key for r in retried] == [run.run_key]  # a retried tick asks for the same run

    with registry.session() as session:
        character = commands.get_character(session, "aiko")
        dataset, _ = commands.record_dataset_version(
            session, character.id, version, {"images": [{}] * 10}, "datasets/aiko/m.json"
        )
        commands.register_lora_release(
            session, character.id, dataset.id, "loras/aiko.safetensors", "0" * 64, "tiny", {}
        )
    assert skip_reason(evaluate(registry, instance)).startswith(
        f"aiko: version {version[:12]} trained"
    )
    approve(registry, 1, start=10)
    (run,) = evaluate(registry, instance).run_requests
    assert run.tags["lora_pipeline/dataset_version"] == version_of(registry) != version


def test_a_set_trains_only_once_it_has_settled(registry, instance) -> None:
    approve(registry, 12)  # the default settle period: ten minutes
    assert skip_reason(evaluate(registry, instance)).startswith("aiko: settling, 10 min left")
    reviewed_ago(registry, 7)
    assert skip_reason(evaluate(registry, instance)).startswith("aiko: settling, 3 min left")
    reviewed_ago(registry, 11)
    (run,) = evaluate(registry, instance).run_requests
    # Each approval in the meantime restarts the wait instead of queueing another training.
    approve(registry, 1, start=12)
    assert skip_reason(evaluate(registry, instance)).startswith("aiko: settling, 10 min left")


def test_a_newer_set_supersedes_the_queued_run(registry, instance, no_settling) -> None:
    approve(registry, 10)
    old = training_run(instance, version_of(registry), DagsterRunStatus.QUEUED)
    assert "is queued" in skip_reason(evaluate(registry, instance))
    approve(registry, 1, start=10)
    (run,) = evaluate(registry, instance).run_requests
    assert run.tags["lora_pipeline/dataset_version"] == version_of(registry)
    cancelled = instance.get_run_by_id(old.run_id)
    assert cancelled.status == DagsterRunStatus.CANCELED
    assert cancelled.tags["lora_pipeline/superseded_by"] == version_of(registry)
    assert "the approved set changed" in cancelled.tags["lora_pipeline/cancel_reason"]


def test_one_queued_and_one_running_at_most(registry, instance, no_settling) -> None:
    approve(registry, 10)
    training_run(instance, version_of(registry), DagsterRunStatus.STARTED)
    assert "is training" in skip_reason(evaluate(registry, instance))
    # A newer set while the older one trains: one run queues behind it.
    approve(registry, 1, start=10)
    (run,) = evaluate(registry, instance).run_requests
    training_run(instance, run.tags["lora_pipeline/dataset_version"], DagsterRunStatus.QUEUED)
    assert "is queued" in skip_reason(evaluate(registry, instance))
    running = instance.get_runs_count()
    assert running == 2


def test_a_run_queued_by_hand_is_left_alone(registry, instance, no_settling) -> None:
    approve(registry, 10)
    by_hand = training_run(instance, "0" * 16, DagsterRunStatus.QUEUED, by_sensor=False)
    assert "queued by hand" in skip_reason(evaluate(registry, instance))
    assert instance.get_run_by_id(by_hand.run_id).status == DagsterRunStatus.QUEUED
