"""Queries used by sensors, assets, the CLI and the review app."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.errors import InvalidInputError, NotFoundError
from lora_pipeline.registry.models import Character, GenerationProfile, Image
from lora_pipeline_tests.registry.conftest import make_cast, passed_gate, sha


def add(session: Session, character: Character, n: int) -> Image:
    return commands.add_image(session, character.id, sha(n), f"i/{n}.png", 8, 8, "frame")[0]


def test_listing_projects_and_characters(session: Session) -> None:
    make_cast(session)
    commands.add_project(session, "another", "Another")
    commands.add_character(session, "another", "ren", "Ren")
    assert [p.slug for p in queries.list_projects(session)] == ["another", "show"]
    assert [c.slug for c in queries.list_characters(session)] == ["aiko", "kenji", "ren"]
    assert [c.slug for c in queries.list_characters(session, "show")] == ["aiko", "kenji"]
    assert queries.character_slugs(session) == ["aiko", "kenji", "ren"]
    with pytest.raises(NotFoundError, match="unknown project 'nope'"):
        queries.list_characters(session, "nope")


def test_image_counts_and_approved_images(session: Session) -> None:
    _, aiko, kenji = make_cast(session)
    assert queries.image_counts(session, aiko.id) == {
        "pending": 0,
        "approved": 0,
        "rejected": 0,
        "skipped": 0,
    }
    images = [add(session, aiko, n) for n in range(1, 6)]
    add(session, kenji, 9)
    for image in (images[3], images[0]):
        commands.approve_image(session, image.id)
    commands.reject_image(session, images[1].id, ["not_solo"])
    assert queries.image_counts(session, aiko.id) == {
        "pending": 2,
        "approved": 2,
        "rejected": 1,
        "skipped": 0,
    }
    assert queries.approved_images(session, aiko.id) == [images[0], images[3]]


def test_pending_images_filters(session: Session) -> None:
    _, aiko, kenji = make_cast(session)
    commands.add_project(session, "another", "Another")
    ren = commands.add_character(session, "another", "ren", "Ren")
    a1, k1, r1, a2 = (
        add(session, aiko, 1),
        add(session, kenji, 2),
        add(session, ren, 3),
        add(session, aiko, 4),
    )
    commands.approve_image(session, a2.id)
    assert queries.pending_images(session) == [a1, k1, r1]
    assert queries.pending_images(session, project_slug="show") == [a1, k1]
    assert queries.pending_images(session, character_slug="kenji") == [k1]
    assert queries.pending_images(session, "show", "aiko") == [a1]
    assert queries.pending_images(session, limit=2) == [a1, k1]
    with pytest.raises(InvalidInputError, match="character 'ren' is not in project 'show'"):
        queries.pending_images(session, "show", "ren")
    with pytest.raises(NotFoundError, match="unknown project 'nope'"):
        queries.pending_images(session, "nope", "ren")
    with pytest.raises(NotFoundError, match="unknown character 'bob'"):
        queries.pending_images(session, character_slug="bob")
    with pytest.raises(InvalidInputError, match="limit must be a positive whole number"):
        queries.pending_images(session, limit=0)


def test_feedback_after_is_a_cursor(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    ids = [
        commands.reject_image(session, add(session, aiko, n).id, "bad_quality").id
        for n in (1, 2, 3)
    ]
    assert [f.id for f in queries.feedback_after(session, 0)] == ids
    assert [f.id for f in queries.feedback_after(session, ids[0])] == ids[1:]
    assert [f.id for f in queries.feedback_after(session, 0, limit=1)] == ids[:1]
    assert queries.feedback_after(session, ids[-1]) == []


def test_rejections_after_names_the_character(session: Session) -> None:
    _, aiko, kenji = make_cast(session)
    first = commands.reject_image(session, add(session, aiko, 1).id, "bad_quality").id
    second = commands.reject_image(session, add(session, kenji, 2).id, "bad_quality").id
    assert queries.rejections_after(session, 0, 10) == [(first, aiko.slug), (second, kenji.slug)]
    assert queries.rejections_after(session, 0, 1) == [(first, aiko.slug)]
    assert queries.rejections_after(session, first, 10) == [(second, kenji.slug)]
    with pytest.raises(InvalidInputError, match="limit must be a positive whole number"):
        queries.rejections_after(session, 0, 0)


def test_sources_after_by_state(session: Session) -> None:
    make_cast(session)
    first, second, third = (
        commands.create_source(session, "show", "url", f"https://e.com/{n}", "aiko")
        for n in range(3)
    )
    commands.set_source_state(session, second.id, "done")
    assert queries.sources_after(session, 0) == [first, third]
    assert queries.sources_after(session, first.id) == [third]
    assert queries.sources_after(session, 0, states=("pending", "done")) == [first, second, third]
    assert queries.sources_after(session, 0, states="done") == [second]
    with pytest.raises(InvalidInputError, match="unknown source state 'new'"):
        queries.sources_after(session, 0, states=("new",))


def test_frames_of_source_in_frame_order(session: Session) -> None:
    make_cast(session)
    source = commands.create_source(session, "show", "url", "https://e.com/v", "aiko")
    late, _ = commands.add_frame(session, source.id, sha(1), "f/1.png", 9, 9.0, 8, 8)
    early, _ = commands.add_frame(session, source.id, sha(2), "f/2.png", 1, 1.0, 8, 8)
    assert queries.frames_of_source(session, source.id) == [early, late]
    assert queries.frames_of_source(session, 999) == []


def test_dataset_and_release_queries(session: Session) -> None:
    _, aiko, kenji = make_cast(session)
    assert queries.latest_dataset_version(session, aiko.id) is None
    assert queries.latest_release(session, aiko.id) is None
    assert queries.active_release(session, aiko.id) is None
    old, _ = commands.record_dataset_version(session, aiko.id, "aaaa1111", {"images": []}, "m1")
    new, _ = commands.record_dataset_version(session, aiko.id, "bbbb2222", {"images": []}, "m2")
    assert queries.latest_dataset_version(session, aiko.id) is new
    release = commands.register_lora_release(session, aiko.id, old.id, "l.st", sha(1), "sd", {})
    assert queries.trained_dataset_hashes(session, aiko.id) == {"aaaa1111"}
    passed_gate(session, release.id)
    commands.set_release_status(session, release.id, "active")
    assert queries.active_release(session, aiko.id) is release
    assert queries.active_release(session, kenji.id) is None


def test_generation_jobs_newest_first(session: Session) -> None:
    _, aiko, kenji = make_cast(session)
    jobs = [
        commands.create_generation_job(session, c.id, "p", "", n, {})
        for n, c in enumerate((aiko, kenji, aiko))
    ]
    commands.mark_job(session, jobs[2].id, "running")
    assert queries.generation_jobs(session) == jobs[::-1]
    assert queries.generation_jobs(session, character_id=aiko.id) == [jobs[2], jobs[0]]
    assert queries.generation_jobs(session, status="running") == [jobs[2]]
    assert queries.generation_jobs(session, limit=1) == [jobs[2]]
    assert queries.generation_jobs(session, limit=None) == jobs[::-1]
    with pytest.raises(InvalidInputError, match="unknown job status 'stuck'"):
        queries.generation_jobs(session, status="stuck")


def test_the_partition_and_pending_sources_of_an_ingest(session: Session) -> None:
    _, aiko, kenji = make_cast(session)
    single = commands.create_source(session, "show", "url", "https://v/1", character_slug="kenji")
    project = commands.create_source(session, "show", "url", "https://v/2", mode="project")
    commands.add_project(session, "empty", "Empty")
    lonely = commands.create_source(session, "empty", "url", "https://v/3", mode="project")
    # Project mode runs in the project's first character's partition, once for all of them.
    assert queries.ingest_partition(session, single) == "kenji"
    assert queries.ingest_partition(session, project) == "aiko"
    assert queries.ingest_partition(session, lonely) is None
    assert queries.pending_source_ids(session, "aiko") == [project.id]
    assert queries.pending_source_ids(session, "kenji") == [single.id, project.id]
    commands.set_source_state(session, project.id, "done")
    assert queries.pending_source_ids(session, "aiko") == []
    with pytest.raises(NotFoundError, match="unknown character 'nobody'"):
        queries.pending_source_ids(session, "nobody")


def test_frame_paths_in_frame_order(session: Session) -> None:
    make_cast(session)
    source = commands.create_source(session, "show", "url", "https://v/1", character_slug="aiko")
    frames = [
        commands.add_frame(session, source.id, sha(n), f"frames/{n}.png", n, 0.0, 8, 8)[0]
        for n in (3, 1, 2)
    ]
    assert queries.frame_paths(session, [f.id for f in reversed(frames)]) == [
        "frames/3.png",
        "frames/1.png",
        "frames/2.png",
    ]
    assert queries.frame_paths(session, []) == []


def test_pending_jobs_their_comfyui_prompts_and_the_default_lora_strength(
    session: Session,
) -> None:
    project, aiko, _ = make_cast(session)
    first, second, third = (
        commands.create_generation_job(session, aiko.id, "aiko", "", n, {}) for n in (1, 2, 3)
    )
    commands.mark_job(session, second.id, "running")
    commands.set_job_prompt_id(session, second.id, "prompt-2")
    assert [job.id for job in queries.pending_jobs_after(session, 0)] == [first.id, third.id]
    assert [job.id for job in queries.pending_jobs_after(session, first.id)] == [third.id]
    assert queries.comfyui_prompt_ids(session, [first.id, second.id]) == {second.id: "prompt-2"}
    assert queries.default_profile(session, project.id) is None
    session.add(GenerationProfile(project_id=project.id, name="default", lora_strength=0.65))
    session.flush()
    assert queries.default_profile(session, project.id).lora_strength == 0.65
