"""The training sensor starts a training once, when it should (build_sensor_context): ten
approved images, a set that has settled, at most one queued and one running per character,
and a skip reason that says why each character waits."""

from __future__ import annotations

import hashlib
import itertools
import random
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, SensorResult, build_sensor_context
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test

from lora_pipeline.dataset import approved_sets
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


def evaluate(
    registry: Registry, instance: DagsterInstance, cursor: str | None = None
) -> SensorResult:
    context = build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"registry": RegistryResource(database_url=registry.url)},
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


def requests(result: SensorResult) -> list[tuple]:
    return [(r.run_key, r.partition_key, dict(r.tags)) for r in result.run_requests]


def reason(result: SensorResult) -> str | None:
    return result.skip_reason.skip_message if result.skip_reason else None


def _add_pending(registry: Registry, slug: str, serial: itertools.count) -> int:
    with registry.session() as session:
        character = commands.get_character(session, slug)
        n = next(serial)
        digest = hashlib.sha256(f"{slug}-{n}".encode()).hexdigest()
        image, _ = commands.add_image(
            session, character.id, digest, f"images/{slug}-{n}.png", 64, 64, "generated"
        )
        return image.id


def _release_current_set(registry: Registry, slug: str) -> None:
    version = version_of(registry, slug)
    with registry.session() as session:
        character = commands.get_character(session, slug)
        dataset, _ = commands.record_dataset_version(
            session, character.id, version, {"images": []}, f"datasets/{slug}/{version}.json"
        )
        commands.register_lora_release(
            session,
            character.id,
            dataset.id,
            f"loras/{slug}-{version[:8]}.safetensors",
            "0" * 64,
            "tiny",
            {},
        )


def _random_step(registry, rng: random.Random, pending: list[int], serial, tracker) -> None:
    """One event of a studio's day: new images, a decision (sometimes committed after a newer
    one, stamped up to 90 s before the cursor), a release, a new character."""
    with registry.session() as session:
        slugs = [c.slug for c in queries.list_characters(session)]
    kind = rng.choices(
        ["add", "approve", "reject", "late", "release", "character"], [6, 8, 2, 2, 1, 0.5]
    )[0]
    if kind == "add" or (kind in ("approve", "reject", "late") and not pending):
        for _ in range(rng.randint(1, 4)):
            pending.append(_add_pending(registry, rng.choice(slugs), serial))
    elif kind in ("approve", "late"):
        image_id = pending.pop(rng.randrange(len(pending)))
        with registry.session() as session:
            image = commands.approve_image(session, image_id)
            if kind == "late" and tracker is not None and tracker.decided_up_to is not None:
                image.reviewed_at = tracker.decided_up_to - timedelta(seconds=rng.randint(1, 90))
    elif kind == "reject":
        with registry.session() as session:
            commands.reject_image(
                session, pending.pop(rng.randrange(len(pending))), ["bad_quality"]
            )
    elif kind == "release":
        _release_current_set(registry, rng.choice(slugs))
    else:
        with registry.session() as session:
            n = next(serial)
            commands.add_character(session, "demo", f"extra-{n}", f"Extra {n}")


@pytest.mark.parametrize("seed", range(3))
def test_the_cursor_decides_as_a_full_read_does(registry, instance, no_settling, seed) -> None:
    # The same run requests and skip reasons, tick after tick, whether the sensor carries its
    # cursor or reads every approved set again (as it did before it had one).
    rng, serial, pending = random.Random(seed), itertools.count(), []
    tracker, cursor = None, None
    for _ in range(60):
        _random_step(registry, rng, pending, serial, tracker)
        with registry.session(readonly=True) as session:
            tracker, tracked = approved_sets.advance(session, tracker)
            assert tracked == approved_sets.read_all(session)
        carried, fresh = evaluate(registry, instance, cursor), evaluate(registry, instance)
        assert requests(carried) == requests(fresh)
        assert reason(carried) == reason(fresh)
        cursor = carried.cursor
    assert any(s.approved >= 10 for s in tracked)  # the stream reached trainable sets


def test_a_tick_reads_again_only_the_characters_decided_on(
    registry, instance, no_settling, monkeypatch
) -> None:
    with registry.session() as session:
        commands.add_character(session, "demo", "mio", "Mio")
    approve(registry, 9)
    approve(registry, 3, slug="mio")
    reviewed_ago(registry, 30)
    approve(registry, 1, slug="kenji")
    cursor = evaluate(registry, instance).cursor
    read: list[int] = []
    real = approved_sets.queries.approved_pairs

    def counted(session, character_id):
        read.append(character_id)
        return real(session, character_id)

    monkeypatch.setattr(approved_sets.queries, "approved_pairs", counted)
    approve(registry, 1, start=1, slug="kenji")
    result = evaluate(registry, instance, cursor)
    with registry.session() as session:
        ids = {s: commands.get_character(session, s).id for s in ("aiko", "kenji", "mio")}
    # aiko and mio were decided on 30 minutes before the cursor (kenji's first approval):
    # neither is read again.
    assert read == [ids["kenji"]]
    assert reason(result) == "aiko: 9/10 approved; kenji: 2/10 approved; mio: 3/10 approved"


def test_a_decision_committed_late_within_the_window_is_seen(registry, instance, no_settling):
    approve(registry, 9)
    reviewed_ago(registry, 5)
    approve(registry, 1, slug="kenji")  # the newest decision: the cursor
    first = evaluate(registry, instance)
    assert reason(first).startswith("aiko: 9/10 approved")
    tracker = approved_sets.Tracker.from_cursor(first.cursor)
    # A reviewer's approval stamped a minute before the newest decision, committed after it.
    image_id = _add_pending(registry, "aiko", itertools.count(100))
    with registry.session() as session:
        commands.approve_image(session, image_id).reviewed_at = tracker.decided_up_to - timedelta(
            minutes=1
        )
    (run,) = evaluate(registry, instance, first.cursor).run_requests
    assert run.tags["lora_pipeline/dataset_version"] == version_of(registry)


def test_an_unreadable_cursor_starts_over(registry, instance, no_settling) -> None:
    approve(registry, 10)
    (run,) = evaluate(registry, instance, "not json").run_requests
    assert [r.run_key for r in evaluate(registry, instance).run_requests] == [run.run_key]
