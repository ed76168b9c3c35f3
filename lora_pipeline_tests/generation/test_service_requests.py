"""Generation requests: recorded as pending jobs, run exactly once by generate_for_character,
and cleared when stuck (tiny SD on the CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image as PILImage

from lora_pipeline.generation.advisor import BuiltinAdvisor
from lora_pipeline.generation.backends import LocalImageBackend
from lora_pipeline.generation.local import DiffusersGenerator
from lora_pipeline.generation.service import (
    GenerationPlan,
    clear_stuck_jobs,
    generate_for_character,
    pending_requests,
    request_generation,
)
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands, suggestions
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.errors import InvalidInputError
from lora_pipeline.registry.models import GenerationJob, Image, utcnow


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    registry = Registry(url)
    with registry.session() as session:
        commands.add_project(session, "show", "The Show", style_prompt="anime style")
        for slug, prompt in (("aiko", "teal hair"), ("kenji", "black hair")):
            commands.add_character(
                session,
                "show",
                slug,
                slug.title(),
                design_prompt=prompt,
                negative_prompt="lowres",
                steps=2,
                width=64,
                height=64,
            )
    yield registry
    registry.dispose()


@pytest.fixture
def backend(generator: DiffusersGenerator) -> LocalImageBackend:
    return LocalImageBackend(generator)


def request_job(registry: Registry, slug: str = "aiko", **kwargs) -> int:
    with registry.session() as session:
        return request_generation(session, slug, **kwargs)[0].id


def job(registry: Registry, job_id: int) -> GenerationJob:
    with registry.session() as session:
        return session.get(GenerationJob, job_id)


def run(registry, root, backend, slug, logs, **plan) -> object:
    return generate_for_character(
        registry, root, backend, slug, GenerationPlan(**plan), logs.append
    )


def test_requested_jobs_run_as_requested(registry, backend, tmp_path: Path) -> None:
    root, logs = DataRoot(tmp_path / "data"), []
    first = request_job(registry, prompt_override="aiko, running", negative_prompt="blurry", seed=5)
    second = request_job(registry, seed=6)
    with registry.session() as session:
        assert [j.id for j in pending_requests(session, 0)] == [first, second]
        assert [j.id for j in pending_requests(session, first)] == [second]
    outcome = run(registry, root, backend, "aiko", logs, job_ids=(first, second), count=9)
    assert len(outcome.image_ids) == 2 and outcome.failed_jobs == []
    with registry.session() as session:
        images = [session.get(Image, i) for i in outcome.image_ids]
        assert pending_requests(session, 0) == []
    assert {i.status for i in images} == {"pending"}
    assert images[0].generation_job_id == first
    params = images[0].generation_params
    assert (params["prompt"], params["negative_prompt"], params["seed"]) == (
        "aiko, running",
        "lowres, blurry",
        5,
    )
    assert params["requested_by"] == "review" and params["width"] == 64
    assert images[1].generation_params["prompt"] == "aiko, teal hair, anime style"
    assert job(registry, first).status == "completed"
    # A retried run does not make the same images again.
    again = run(registry, root, backend, "aiko", logs, job_ids=(first,))
    assert again.image_ids == [] and any("not run again" in line for line in logs)


def test_a_job_of_another_character_is_refused(registry, backend, tmp_path: Path) -> None:
    kenji_job = request_job(registry, "kenji")
    with pytest.raises(InvalidInputError, match="not a job of character 'aiko'"):
        run(registry, DataRoot(tmp_path), backend, "aiko", [], job_ids=(kenji_job,))
    assert job(registry, kenji_job).status == "pending"


def test_video_jobs_fail_clearly_on_the_local_backend(registry, backend, tmp_path: Path) -> None:
    video = request_job(registry, kind="video")
    outcome = run(registry, DataRoot(tmp_path), backend, "aiko", [], job_ids=(video,))
    assert outcome.failed_jobs == [video]
    failed = job(registry, video)
    assert failed.status == "failed" and "video jobs need ComfyUI" in failed.error


def test_a_job_with_unusable_settings_fails_alone(registry, backend, tmp_path: Path) -> None:
    bad = request_job(registry)
    good = request_job(registry)
    with registry.session() as session:
        session.get(GenerationJob, bad).params = {"requested_by": "review", "width": 50}
    outcome = run(registry, DataRoot(tmp_path), backend, "aiko", [], job_ids=(bad, good))
    assert outcome.failed_jobs == [bad] and len(outcome.image_ids) == 1
    assert "multiple of 8" in job(registry, bad).error


def test_regeneration_asks_the_advisor_after_three_rejections(
    registry, backend, tmp_path: Path
) -> None:
    root, logs = DataRoot(tmp_path / "data"), []
    with registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        feedback = []
        for n in range(3):
            stored = root.put_image(PILImage.new("RGB", (8, 8), (n, 0, 0)))
            image, _ = commands.add_image(
                session, aiko.id, stored.sha256, stored.relpath, 8, 8, "generated"
            )
            feedback.append(commands.reject_image(session, image.id, ["not_solo"]).id)
    # Without advisors nothing is proposed.
    run(registry, root, backend, "aiko", logs, count=1, feedback_ids=tuple(feedback[:1]))
    with registry.session() as session:
        assert suggestions.open_suggestions(session) == {}
    outcome = generate_for_character(
        registry,
        root,
        backend,
        "aiko",
        GenerationPlan(count=1, feedback_ids=tuple(feedback[1:])),
        logs.append,
        advisors=[BuiltinAdvisor()],
    )
    with registry.session() as session:
        (row,) = suggestions.open_suggestions(session).values()
        new = [commands.get_image(session, i) for i in outcome.image_ids]
    assert row.suggested_prompt == "solo, teal hair"
    # One new image per rejection, each answering its own.
    assert [image.provenance["answers_feedback"] for image in new] == [[f] for f in feedback[1:]]
    new = new[0]
    assert "multiple characters" in new.generation_params["negative_prompt"]
    assert any("prompt suggestion" in line for line in logs)


def test_clear_stuck_jobs_stops_comfyui_prompts(registry) -> None:
    old, fresh = request_job(registry), request_job(registry)
    with registry.session() as session:
        commands.mark_job(session, old, "running", comfyui_prompt_id="p-old")
        session.get(GenerationJob, old).started_at = utcnow() - timedelta(hours=2)
    stopped: list[str] = []
    cleared = clear_stuck_jobs(registry, timedelta(minutes=30), lambda p: stopped.append(p) or "x")
    assert cleared.failed == [old] and cleared.cancelled == {old: "x"} and stopped == ["p-old"]
    assert job(registry, fresh).status == "pending"
    assert "stuck: running since" in job(registry, old).error
