"""Concurrent writers: two reviewers, two workers, two processes get exactly one outcome."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.errors import ConflictError
from lora_pipeline.registry.models import Feedback, Image, LoraRelease
from lora_pipeline_tests.registry.conftest import make_cast, passed_gate, sha

IMAGES_PER_RACE = 8
Decision = Callable[[Session, int, str], object]


def approve(session: Session, image_id: int, reviewer: str) -> object:
    return commands.approve_image(session, image_id, reviewer=reviewer)


def reject(session: Session, image_id: int, reviewer: str) -> object:
    return commands.reject_image(
        session, image_id, ["bad_quality"], prompt_edit=f"prompt by {reviewer}", reviewer=reviewer
    )


def seed_images(registry: Registry, count: int) -> list[int]:
    with registry.session() as session:
        _, aiko, _ = make_cast(session)
        return [
            commands.add_image(session, aiko.id, sha(n), f"images/{n}.png", 8, 8, "frame")[0].id
            for n in range(1, count + 1)
        ]


def decide_all(
    registry: Registry, image_ids: list[int], reviewer: str, decision: Decision, barrier: Any
) -> list[tuple[int, str]]:
    """Decide every image, meeting the other reviewer at the barrier before each one."""
    outcomes = []
    for image_id in image_ids:
        barrier.wait(timeout=60)
        try:
            with registry.session() as session:
                decision(session, image_id, reviewer)
            outcomes.append((image_id, "won"))
        except ConflictError as error:
            outcomes.append((image_id, str(error)))
    return outcomes


def assert_one_outcome_each(
    registry: Registry, image_ids: list[int], outcomes: dict[str, list[tuple[int, str]]]
) -> None:
    final_prompt = None
    with registry.session() as session:
        for image_id in image_ids:
            image = session.get(Image, image_id)
            assert image is not None
            results = {name: dict(rows)[image_id] for name, rows in outcomes.items()}
            winners = [name for name, result in results.items() if result == "won"]
            assert len(winners) == 1, results
            (winner,) = winners
            assert image.reviewed_by == winner
            (loser,) = set(results) - {winner}
            assert results[loser] == f"image {image_id} was already {image.status} by {winner}"
            feedback = session.scalars(select(Feedback).where(Feedback.image_id == image_id)).all()
            assert len(feedback) == (1 if image.status == "rejected" else 0)
            if image.status == "rejected":
                assert feedback[0].reviewer == winner
                final_prompt = f"prompt by {winner}"
        aiko = commands.get_character(session, "aiko")
        # Only a winning rejection may edit the prompt: the loser's edit was rolled back.
        assert aiko.design_prompt == (final_prompt or "teal hair")
        assert queries.image_counts(session, aiko.id)["pending"] == 0


def test_two_reviewers_in_threads(registry: Registry) -> None:
    image_ids = seed_images(registry, IMAGES_PER_RACE)
    barrier = threading.Barrier(2)
    outcomes: dict[str, list[tuple[int, str]]] = {}
    errors: list[BaseException] = []

    def review(name: str, decision: Decision) -> None:
        try:
            outcomes[name] = decide_all(registry, image_ids, name, decision, barrier)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
            barrier.abort()

    threads = [
        threading.Thread(target=review, args=("alice", approve)),
        threading.Thread(target=review, args=("bob", reject)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert_one_outcome_each(registry, image_ids, outcomes)


def _review_in_child(url: str, image_ids: list[int], name: str, barrier: Any, queue: Any) -> None:
    registry = Registry(url)
    try:
        decision = approve if name == "alice" else reject
        queue.put((name, decide_all(registry, image_ids, name, decision, barrier)))
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        barrier.abort()
        queue.put((name, f"error: {error!r}"))
    finally:
        registry.dispose()


def test_two_reviewers_in_processes(registry: Registry) -> None:
    image_ids = seed_images(registry, IMAGES_PER_RACE)
    registry.dispose()
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(2), context.Queue()
    children = [
        context.Process(
            target=_review_in_child, args=(registry.url, image_ids, name, barrier, queue)
        )
        for name in ("alice", "bob")
    ]
    for child in children:
        child.start()
    outcomes = dict(queue.get(timeout=180) for _ in children)
    for child in children:
        child.join(timeout=60)
    assert all(isinstance(rows, list) for rows in outcomes.values()), outcomes
    assert_one_outcome_each(registry, image_ids, outcomes)


# --- deterministic overlaps: the second writer starts while the first holds its lock ----------


def wait_until_blocked(registry: Registry, started: threading.Event) -> None:
    """Return once the other thread's statement waits on our uncommitted write.

    PostgreSQL shows the waiting backend; SQLite's waiting writer (busy handler) cannot be
    observed, so give it a moment: the outcome does not depend on it, only the overlap does.
    """
    assert started.wait(timeout=30)
    if registry.engine.dialect.name != "postgresql":
        time.sleep(0.3)
        return
    with registry.engine.connect() as connection:
        for _ in range(300):
            waiting = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
            if waiting:
                return
            connection.rollback()
            time.sleep(0.1)
    raise AssertionError("the second writer never waited for the first")


def run_in_thread(target: Callable[[], object]) -> tuple[threading.Thread, threading.Event, dict]:
    started, result = threading.Event(), {}

    def body() -> None:
        started.set()
        try:
            result["value"] = target()
        except BaseException as error:  # noqa: BLE001 - inspected by the test
            result["error"] = error

    thread = threading.Thread(target=body)
    thread.start()
    return thread, started, result


def test_second_reviewer_waits_and_loses(registry: Registry) -> None:
    (image_id,) = seed_images(registry, 1)

    def bob() -> object:
        with registry.session() as session:
            return reject(session, image_id, "bob")

    with registry.session() as session:
        approve(session, image_id, "alice")
        thread, started, result = run_in_thread(bob)
        wait_until_blocked(registry, started)
    thread.join(timeout=60)
    assert isinstance(result.get("error"), ConflictError), result
    assert str(result["error"]) == f"image {image_id} was already approved by alice"
    with registry.session() as session:
        assert session.scalar(select(func.count(Feedback.id))) == 0
        assert commands.get_character(session, "aiko").design_prompt == "teal hair"


def test_concurrent_add_image_returns_the_winners_row(registry: Registry) -> None:
    with registry.session() as session:
        _, aiko, _ = make_cast(session)
        character_id = aiko.id

    def add() -> tuple[int, bool]:
        with registry.session() as session:
            image, created = commands.add_image(
                session, character_id, sha(7), "images/7.png", 8, 8, "frame"
            )
            return image.id, created

    with registry.session() as session:
        first, created = commands.add_image(
            session, character_id, sha(7), "images/7.png", 8, 8, "frame"
        )
        assert created
        # PostgreSQL: the other insert waits on the unique index, then hits the violation
        # inside its SAVEPOINT and returns this row.
        thread, started, result = run_in_thread(add)
        wait_until_blocked(registry, started)
    thread.join(timeout=60)
    assert result.get("value") == (first.id, False), result
    with registry.session() as session:
        assert session.scalar(select(func.count(Image.id))) == 1


def test_many_threads_add_the_same_image(registry: Registry) -> None:
    with registry.session() as session:
        _, aiko, _ = make_cast(session)
        character_id = aiko.id
    barrier = threading.Barrier(4)
    results: list[tuple[int, bool]] = []

    def add() -> None:
        barrier.wait(timeout=60)
        with registry.session() as session:
            image, created = commands.add_image(
                session, character_id, sha(5), "images/5.png", 8, 8, "frame"
            )
            results.append((image.id, created))

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    assert len({image_id for image_id, _ in results}) == 1
    assert sorted(created for _, created in results) == [False, False, False, True]


def test_concurrent_activation_keeps_one_active_release(registry: Registry) -> None:
    with registry.session() as session:
        _, aiko, _ = make_cast(session)
        ids = [
            commands.register_lora_release(
                session, aiko.id, None, f"loras/{n}.safetensors", sha(n), "sd15", {}
            ).id
            for n in (1, 2)
        ]
        for release_id in ids:
            passed_gate(session, release_id)
        character_id = aiko.id

    def activate_second() -> object:
        with registry.session() as session:
            return commands.set_release_status(session, ids[1], "active").status

    with registry.session() as session:
        commands.set_release_status(session, ids[0], "active")
        thread, started, result = run_in_thread(activate_second)
        wait_until_blocked(registry, started)
    thread.join(timeout=60)
    if registry.engine.dialect.name == "postgresql":
        # Both saw no active release; the unique index lets the first one win.
        assert isinstance(result.get("error"), ConflictError), result
        assert "made active at the same time; try again" in str(result["error"])
        assert activate_second() == "active"  # the retry demotes the first
    else:
        assert result.get("value") == "active", result  # SQLite serialised the two writers
    with registry.session() as session:
        statuses = dict(
            session.execute(
                select(LoraRelease.id, LoraRelease.status).where(
                    LoraRelease.character_id == character_id
                )
            ).all()
        )
        assert statuses == {ids[0]: "approved", ids[1]: "active"}


def test_two_reviewers_deciding_one_release_get_one_outcome(registry: Registry) -> None:
    if registry.engine.dialect.name != "postgresql":
        pytest.skip(
            "SQLite write sessions begin IMMEDIATE: the second reviewer cannot read the release "
            "before the first one's decision commits, so this race cannot happen there"
        )
    with registry.session() as session:
        _, aiko, _ = make_cast(session)
        release_id = commands.register_lora_release(
            session, aiko.id, None, "loras/1.safetensors", sha(1), "sd15", {}
        ).id
        passed_gate(session, release_id)

    def reject_it() -> object:
        with registry.session() as session:
            # Read before the other reviewer's approval commits: this reviewer decided on a
            # candidate.
            assert session.get(LoraRelease, release_id).status == "candidate"
            started_reading.set()
            return commands.set_release_status(session, release_id, "rejected").status

    started_reading = threading.Event()
    with registry.session() as session:
        commands.set_release_status(session, release_id, "approved")
        thread, started, result = run_in_thread(reject_it)
        started_reading.wait(timeout=60)
        wait_until_blocked(registry, started)
    thread.join(timeout=60)
    # The reject waited for the approval's row lock, then found the release no longer a
    # candidate: the second reviewer is told, the first decision stands.
    assert isinstance(result.get("error"), ConflictError), result
    assert "changed by someone else meanwhile" in str(result["error"])
    with registry.session() as session:
        assert session.get(LoraRelease, release_id).status == "approved"


def test_two_workers_start_one_job(registry: Registry) -> None:
    with registry.session() as session:
        _, aiko, _ = make_cast(session)
        job_id = commands.create_generation_job(session, aiko.id, "aiko", "", 1, {}).id

    def start() -> object:
        with registry.session() as session:
            return commands.mark_job(session, job_id, "running").status

    with registry.session() as session:
        commands.mark_job(session, job_id, "running")
        thread, started, result = run_in_thread(start)
        wait_until_blocked(registry, started)
    thread.join(timeout=60)
    assert isinstance(result.get("error"), ConflictError), result
    assert str(result["error"]) == f"generation job {job_id} is running, it cannot become running"


@pytest.mark.parametrize("decision", [approve, reject])
def test_decision_after_commit_elsewhere_is_a_conflict(
    registry: Registry, decision: Decision
) -> None:
    # A session that loaded the image before another reviewer decided still gets a conflict.
    (image_id,) = seed_images(registry, 1)
    with registry.session(readonly=True) as stale:
        assert stale.get(Image, image_id).status == "pending"  # type: ignore[union-attr]
        with registry.session() as other:
            approve(other, image_id, "carol")
    with pytest.raises(ConflictError, match="already approved by carol"), registry.session() as s:
        s.get(Image, image_id)
        decision(s, image_id, "dave")
