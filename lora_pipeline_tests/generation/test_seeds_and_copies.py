"""Seeds as ComfyUI users expect them, and a copy never passes for a new image (tiny SD on the
CPU: the same seed draws the same bytes, so copies here are real ones)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_pipeline.generation import service
from lora_pipeline.generation.backends import LocalImageBackend
from lora_pipeline.generation.local import DiffusersGenerator
from lora_pipeline.generation.service import GenerationPlan, generate_for_character
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.models import Character, Feedback, GenerationJob, Image


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    registry = Registry(url)
    with registry.session() as session:
        commands.add_project(session, "show", "The Show")
        # A seed in the settings, not locked: like the demo's character (seed 7).
        commands.add_character(
            session,
            "show",
            "aiko",
            "Aiko",
            design_prompt="teal hair",
            steps=2,
            seed=7,
            width=64,
            height=64,
        )
    yield registry
    registry.dispose()


@pytest.fixture
def backend(generator: DiffusersGenerator) -> LocalImageBackend:
    return LocalImageBackend(generator)


@pytest.fixture
def root(tmp_path: Path) -> DataRoot:
    return DataRoot(tmp_path / "data")


class ScriptedSeeds:
    """The seed source drawing the given seeds first (then counting up from 10_000), so a
    test can make a regeneration land on the seed of an existing image."""

    def __init__(self, seeds: list[int]) -> None:
        self.seeds = list(seeds)
        self.next_free = 10_000

    def randrange(self, stop: int) -> int:
        if self.seeds:
            return self.seeds.pop(0)
        self.next_free += 1
        return self.next_free


def generate(registry, root, backend, plan: GenerationPlan) -> service.GenerationOutcome:
    return generate_for_character(registry, root, backend, "aiko", plan, lambda _: None)


def images(registry: Registry) -> dict[int, Image]:
    with registry.session() as session:
        rows = session.query(Image).all()
        session.expunge_all()
    return {row.id: row for row in rows}


def reject(registry: Registry, image_id: int) -> int:
    with registry.session() as session:
        return commands.reject_image(session, image_id, ["bad_quality"], reviewer="r").id


def test_an_empty_seed_draws_a_fresh_one_per_image(registry, root, backend) -> None:
    outcome = generate(registry, root, backend, GenerationPlan(count=6))
    made = images(registry)
    seeds = {made[i].generation_params["seed"] for i in outcome.image_ids}
    assert len(outcome.image_ids) == 6 and len(seeds) == 6
    assert 7 not in seeds  # the character's unlocked seed is not reused
    assert len({made[i].sha256 for i in outcome.image_ids}) == 6


def test_requests_without_a_seed_each_get_their_own(registry) -> None:
    with registry.session() as session:
        jobs = service.request_generation(session, "aiko", count=12)
        assert len({job.seed for job in jobs}) == 12


def test_a_locked_seed_counts_up_from_the_characters(registry, root, backend) -> None:
    with registry.session() as session:
        session.get(Character, 1).seed_locked = True
    outcome = generate(registry, root, backend, GenerationPlan(count=3))
    made = images(registry)
    assert [made[i].generation_params["seed"] for i in outcome.image_ids] == [7, 8, 9]


def test_a_pinned_request_seed_wins(registry) -> None:
    with registry.session() as session:
        jobs = service.request_generation(session, "aiko", seed=41, count=2)
        assert [job.seed for job in jobs] == [41, 42]


def test_a_repeated_request_is_recorded_as_a_duplicate(registry, root, backend) -> None:
    first = generate(registry, root, backend, GenerationPlan(count=1, seed=5))
    second = generate(registry, root, backend, GenerationPlan(count=1, seed=5))
    assert second.image_ids == []
    ((job_id, copied),) = second.duplicates.items()
    assert copied == first.image_ids[0]
    with registry.session() as session:
        job = session.get(GenerationJob, job_id)
        assert (job.status, job.duplicate_of_image_id) == ("duplicate", copied)
    assert len(images(registry)) == 1


def test_a_regeneration_never_reuses_the_rejected_seed(registry, root, backend, monkeypatch):
    first = generate(registry, root, backend, GenerationPlan(count=1, seed=5))
    rejected = first.image_ids[0]
    feedback_id = reject(registry, rejected)
    # The seed source offers the rejected image's seed first: it must be passed over.
    monkeypatch.setattr(service, "_seeds", ScriptedSeeds([5]))
    outcome = generate(registry, root, backend, GenerationPlan(feedback_ids=(feedback_id,)))
    (new,) = outcome.image_ids
    made = images(registry)
    assert made[new].generation_params["seed"] != 5
    assert made[new].sha256 != made[rejected].sha256
    assert (made[new].status, made[rejected].status) == ("pending", "rejected")
    with registry.session() as session:
        feedback = session.get(Feedback, feedback_id)
        assert (feedback.regeneration_state, feedback.regeneration_image_id) == ("done", new)


def test_rejecting_regenerations_in_a_row_makes_a_new_image_each_time(registry, root, backend):
    latest = generate(registry, root, backend, GenerationPlan(count=1)).image_ids[0]
    made_ids = [latest]
    for _ in range(3):
        feedback_id = reject(registry, latest)
        plan = GenerationPlan(feedback_ids=(feedback_id,), run_id=f"run-{feedback_id}")
        (latest,) = generate(registry, root, backend, plan).image_ids
        made_ids.append(latest)
    made = images(registry)
    assert len({made[i].sha256 for i in made_ids}) == 4
    assert [made[i].status for i in made_ids] == ["rejected"] * 3 + ["pending"]
    with registry.session() as session:
        answered = session.query(Feedback).order_by(Feedback.id).all()
        assert [f.regeneration_image_id for f in answered] == made_ids[1:]
        assert [f.regeneration_run_id for f in answered] == [f"run-{f.id}" for f in answered]
        jobs = {job.id: job for job in session.query(GenerationJob)}
        assert [jobs[made[i].generation_job_id].run_id for i in made_ids[1:]] == [
            f"run-{f.id}" for f in answered
        ]


def regenerate(registry, root, backend, monkeypatch, image_id: int, seeds: list[int]):
    """Reject the image (always for the same reason, so every answer has the same negatives)
    and answer it, the seed source offering `seeds` first."""
    feedback_id = reject(registry, image_id)
    monkeypatch.setattr(service, "_seeds", ScriptedSeeds(seeds))
    plan = GenerationPlan(feedback_ids=(feedback_id,))
    return feedback_id, generate(registry, root, backend, plan)


def test_a_regeneration_that_copies_an_image_draws_again(registry, root, backend, monkeypatch):
    first, second = generate(registry, root, backend, GenerationPlan(count=2)).image_ids
    # An earlier answer drew seed 21; the next one is offered 21 first: the same prompt,
    # negatives and seed draw a copy of it, so it draws again with another seed.
    _, earlier = regenerate(registry, root, backend, monkeypatch, first, [21])
    _, outcome = regenerate(registry, root, backend, monkeypatch, second, [21])
    (new,) = outcome.image_ids
    assert new not in (*earlier.image_ids, first, second)
    image = images(registry)[new]
    with registry.session() as session:
        job = session.get(GenerationJob, image.generation_job_id)
        assert job.seed == image.generation_params["seed"] == 10_001
        assert job.status == "completed"


def test_a_regeneration_that_only_copies_fails_its_job(registry, root, backend, monkeypatch):
    seeds = [31, 32, 33, 34]
    *answered, last = generate(registry, root, backend, GenerationPlan(count=5)).image_ids
    copies = [
        regenerate(registry, root, backend, monkeypatch, image_id, [seed])
        for image_id, seed in zip(answered, seeds, strict=True)
    ]
    feedback_id, outcome = regenerate(registry, root, backend, monkeypatch, last, seeds)
    assert outcome.image_ids == []
    (job_id,) = outcome.failed_jobs
    with registry.session() as session:
        job = session.get(GenerationJob, job_id)
        assert job.status == "failed"
        assert job.error.startswith(f"produced a copy of image {copies[-1][1].image_ids[0]}")
        assert session.get(Feedback, feedback_id).regeneration_state == "failed"
        assert session.get(Image, last).status == "rejected"
