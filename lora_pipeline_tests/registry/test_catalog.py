"""Projects, characters, sources and frames: validation, conflicts, idempotency."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
)
from lora_pipeline_tests.registry.conftest import make_cast, sha


@pytest.mark.parametrize("slug", ["a", "aiko", "aiko-2", "x_y", "0day", "a" * 64])
def test_valid_slugs(slug: str) -> None:
    assert commands.validate_slug(slug) == slug


@pytest.mark.parametrize(
    "slug", ["", "../x", "a/b", "Aiko", "-x", "_x", "a b", "a" * 65, "aiko\n", ".", None]
)
def test_invalid_slugs_are_explained(slug: object) -> None:
    with pytest.raises(InvalidInputError) as caught:
        commands.validate_slug(slug, "character slug")  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith(f"invalid character slug {slug!r}: ")
    assert "lower-case letters, digits, '-' and '_'" in message
    assert "\n" not in message.replace(repr(slug), "")


@pytest.mark.parametrize("word", ["char_alice", "ab", "emma", "a1", "x" * 32])
def test_valid_trigger_words(word: str) -> None:
    assert commands.validate_trigger_word(word) == word


@pytest.mark.parametrize("word", ["a", "Emma", "char-alice", "x" * 33, "12", "two words", ""])
def test_invalid_trigger_words(word: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid trigger word"):
        commands.validate_trigger_word(word)


def test_errors_share_one_base_class() -> None:
    for error in (NotFoundError, InvalidInputError, ConflictError):
        assert issubclass(error, RegistryError)


def test_add_and_get_project(session: Session) -> None:
    project = commands.add_project(session, "show", "  The Show ", "desc", "anime style")
    assert project.id is not None
    assert (project.name, project.description, project.style_prompt) == (
        "The Show",
        "desc",
        "anime style",
    )
    assert commands.get_project(session, "show") is project
    with pytest.raises(ConflictError, match="project 'show' already exists"):
        commands.add_project(session, "show", "Again")
    with pytest.raises(InvalidInputError, match="project name must not be empty"):
        commands.add_project(session, "other", "  ")
    with pytest.raises(InvalidInputError, match="invalid project slug '../evil'"):
        commands.add_project(session, "../evil", "Evil")
    with pytest.raises(NotFoundError, match="unknown project 'nope'"):
        commands.get_project(session, "nope")
    assert [p.slug for p in queries.list_projects(session)] == ["show"]


def test_add_character_defaults_and_settings(session: Session) -> None:
    commands.add_project(session, "show", "The Show")
    character = commands.add_character(
        session,
        "show",
        "mei-ling",
        "Mei Ling",
        design_prompt="red qipao",
        negative_prompt="blurry",
        seed=2**40,
        cfg=6,
        steps=30,
        sampler="dpmpp_2m",
        scheduler="karras",
        width=768,
        height=1024,
    )
    assert character.trigger_word == "mei_ling"
    assert character.project.slug == "show"
    assert (character.seed, character.cfg, character.steps) == (2**40, 6.0, 30)
    assert (character.sampler, character.scheduler, character.width, character.height) == (
        "dpmpp_2m",
        "karras",
        768,
        1024,
    )
    plain = commands.add_character(session, "show", "kenji", "Kenji")
    assert (plain.seed, plain.cfg, plain.steps, plain.width) == (None, 7.0, 25, 512)
    assert commands.get_character(session, "mei-ling") is character


def test_add_character_errors(session: Session) -> None:
    make_cast(session)
    with pytest.raises(NotFoundError, match="unknown project 'nope'"):
        commands.add_character(session, "nope", "x", "X")
    with pytest.raises(ConflictError, match="character 'aiko' already exists"):
        commands.add_character(session, "show", "aiko", "Aiko again")
    with pytest.raises(ConflictError, match="trigger word 'aiko' is already used by character"):
        commands.add_character(session, "show", "aiko2", "Aiko 2", trigger_word="aiko")
    with pytest.raises(InvalidInputError, match="derived from the slug: pass a trigger word"):
        commands.add_character(session, "show", "x", "X")
    with pytest.raises(InvalidInputError, match="unknown character setting colour: valid are"):
        commands.add_character(session, "show", "ren", "Ren", colour="red")
    with pytest.raises(InvalidInputError, match="width must be a multiple of 8, got 500"):
        commands.add_character(session, "show", "ren", "Ren", width=500)
    with pytest.raises(InvalidInputError, match="steps must be between 1 and 10000, got 0"):
        commands.add_character(session, "show", "ren", "Ren", steps=0)
    with pytest.raises(InvalidInputError, match="seed must be a whole number"):
        commands.add_character(session, "show", "ren", "Ren", seed=1.5)
    with pytest.raises(InvalidInputError, match="cfg must be a number"):
        commands.add_character(session, "show", "ren", "Ren", cfg=float("nan"))
    with pytest.raises(NotFoundError, match="unknown character 'bob'"):
        commands.get_character(session, "bob")
    assert queries.character_slugs(session) == ["aiko", "kenji"]


def test_update_design_prompt_and_settings(session: Session) -> None:
    make_cast(session)
    character = commands.update_design_prompt(session, "aiko", "  teal hair, yellow coat ")
    assert character.design_prompt == "teal hair, yellow coat"
    with pytest.raises(InvalidInputError, match="design prompt must not be empty"):
        commands.update_design_prompt(session, "aiko", " ")
    with pytest.raises(NotFoundError, match="unknown character 'bob'"):
        commands.update_design_prompt(session, "bob", "x")
    updated = commands.update_character(session, "aiko", seed=7, cfg=5.5)
    assert (updated.seed, updated.cfg) == (7, 5.5)


def test_update_character_changes_only_what_is_given(session: Session) -> None:
    make_cast(session)
    before = commands.get_character(session, "aiko")
    trigger, prompt = before.trigger_word, before.design_prompt
    updated = commands.update_character(
        session, "aiko", name="Aiko Tanaka", negative_prompt="lowres", seed=11, seed_locked=True
    )
    assert (updated.name, updated.negative_prompt, updated.seed) == ("Aiko Tanaka", "lowres", 11)
    assert updated.seed_locked and (updated.trigger_word, updated.design_prompt) == (
        trigger,
        prompt,
    )
    assert (
        commands.update_character(session, "aiko", trigger_word="aiko_t").trigger_word == "aiko_t"
    )
    kenji = commands.get_character(session, "kenji").trigger_word
    with pytest.raises(ConflictError, match=f"trigger word '{kenji}' is already used"):
        commands.update_character(session, "aiko", trigger_word=kenji)
    with pytest.raises(InvalidInputError, match="a locked seed needs a seed"):
        commands.update_character(session, "kenji", seed_locked=True)
    with pytest.raises(InvalidInputError, match="unknown character setting colour"):
        commands.update_character(session, "kenji", colour="red")


def test_create_source_single_and_project_mode(session: Session) -> None:
    make_cast(session)
    single = commands.create_source(
        session, "show", "url", "https://example.com/v", character_slug="aiko", fps=0.5
    )
    assert (single.state, single.mode, single.fps, single.max_frames) == (
        "pending",
        "single",
        0.5,
        100,
    )
    assert single.character_id == commands.get_character(session, "aiko").id
    whole = commands.create_source(
        session, "show", "video_upload", "uploads/ep1.mp4", mode="project", max_frames=5
    )
    assert whole.character_id is None


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"kind": "ftp"}, InvalidInputError, "invalid source kind 'ftp': use one of url, "),
        ({"mode": "crowd"}, InvalidInputError, "invalid ingest mode 'crowd'"),
        ({"character_slug": None}, InvalidInputError, "single mode needs a character"),
        ({"character_slug": "bob"}, NotFoundError, "unknown character 'bob'"),
        ({"character_slug": "ren"}, InvalidInputError, "'ren' is not in project 'show'"),
        ({"mode": "project"}, InvalidInputError, "project mode sorts frames"),
        ({"fps": 0}, InvalidInputError, "fps must be above 0"),
        ({"max_frames": 0}, InvalidInputError, "max_frames must be between 1 and"),
        ({"uri": "file:///etc/passwd"}, InvalidInputError, "must be an http:// or https://"),
        ({"uri": " "}, InvalidInputError, "source uri must not be empty"),
        ({"project_slug": "nope"}, NotFoundError, "unknown project 'nope'"),
    ],
)
def test_create_source_errors(
    session: Session, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    make_cast(session)
    commands.add_project(session, "other", "Other")
    commands.add_character(session, "other", "ren", "Ren")
    arguments: dict[str, object] = {
        "project_slug": "show",
        "kind": "url",
        "uri": "https://example.com/v",
        "character_slug": "aiko",
    } | kwargs
    with pytest.raises(error, match=message):
        commands.create_source(session, **arguments)  # type: ignore[arg-type]


def test_set_source_state(session: Session) -> None:
    make_cast(session)
    source = commands.create_source(session, "show", "url", "https://e.com/v", "aiko")
    running = commands.set_source_state(session, source.id, "running")
    assert (running.state, running.processed_at) == ("running", None)
    done = commands.set_source_state(
        session, source.id, "done", video_id="abc", local_path="downloads/abc.mp4", stats={"n": 3}
    )
    assert (done.state, done.video_id, done.local_path, done.stats) == (
        "done",
        "abc",
        "downloads/abc.mp4",
        {"n": 3},
    )
    assert done.processed_at is not None
    failed = commands.set_source_state(session, source.id, "failed", error="HTTP 404")
    assert (failed.state, failed.error) == ("failed", "HTTP 404")
    with pytest.raises(InvalidInputError, match="invalid source state 'lost'"):
        commands.set_source_state(session, source.id, "lost")
    with pytest.raises(InvalidInputError, match="unknown source field colour"):
        commands.set_source_state(session, source.id, "done", colour="red")
    with pytest.raises(InvalidInputError, match="must be relative to the data root"):
        commands.set_source_state(session, source.id, "done", local_path="/etc/passwd")
    with pytest.raises(NotFoundError, match="unknown source 999"):
        commands.set_source_state(session, 999, "done")


def test_add_frame_is_idempotent(session: Session) -> None:
    make_cast(session)
    source = commands.create_source(session, "show", "url", "https://e.com/v", "aiko")
    frame, created = commands.add_frame(session, source.id, sha(1), "frames/a.png", 0, 0.0, 64, 48)
    assert created
    again, created_again = commands.add_frame(
        session, source.id, sha(1).upper(), "frames/other.png", 5, 5.0, 64, 48
    )
    assert (again.id, created_again, again.path) == (frame.id, False, "frames/a.png")
    second, created = commands.add_frame(session, source.id, sha(2), "frames/b.png", 1, 1.0, 64, 48)
    assert created and second.id != frame.id
    assert [f.id for f in queries.frames_of_source(session, source.id)] == [frame.id, second.id]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((sha(1), "/abs/a.png", 0, 0.0, 4, 4), "must be relative to the data root"),
        ((sha(1), "../a.png", 0, 0.0, 4, 4), "without '..' parts"),
        (("abc", "a.png", 0, 0.0, 4, 4), "invalid sha256 'abc': expected 64 hexadecimal"),
        ((sha(1), "a.png", -1, 0.0, 4, 4), "frame_index must be between 0 and"),
        ((sha(1), "a.png", 0, -2.0, 4, 4), "timestamp_s must not be negative"),
        ((sha(1), "a.png", 0, 0.0, 0, 4), "width must be between 1 and"),
    ],
)
def test_add_frame_errors(session: Session, args: tuple[object, ...], message: str) -> None:
    make_cast(session)
    source = commands.create_source(session, "show", "url", "https://e.com/v", "aiko")
    with pytest.raises(InvalidInputError, match=message):
        commands.add_frame(session, source.id, *args)  # type: ignore[arg-type]


def test_record_frame_identification(session: Session) -> None:
    make_cast(session)
    commands.add_project(session, "other", "Other")
    commands.add_character(session, "other", "ren", "Ren")
    source = commands.create_source(session, "show", "url", "https://e.com/v", mode="project")
    frame, _ = commands.add_frame(session, source.id, sha(1), "frames/a.png", 0, 0.0, 64, 48)
    assert frame.identified is None
    identified = commands.record_frame_identification(
        session, frame.id, ["kenji", "aiko", "kenji"], "llava", "Kenji and Aiko"
    )
    assert identified.identified == ["kenji", "aiko"]
    assert (identified.identifier, identified.raw_answer) == ("llava", "Kenji and Aiko")
    assert identified.classified_at is not None
    nobody = commands.record_frame_identification(session, frame.id, [], "llava", "nobody")
    assert nobody.identified == []
    with pytest.raises(InvalidInputError, match="unknown character 'ren' in the project of frame"):
        commands.record_frame_identification(session, frame.id, ["ren"], "llava", "Ren")
    with pytest.raises(InvalidInputError, match="slugs must be a list"):
        commands.record_frame_identification(session, frame.id, "aiko", "llava", "")  # type: ignore[arg-type]
    with pytest.raises(NotFoundError, match="unknown frame 999"):
        commands.record_frame_identification(session, 999, [], "llava", "")


def test_unclassified_frames_store_sql_null(registry: Registry) -> None:
    from sqlalchemy import select

    from lora_pipeline.registry.models import Frame

    with registry.session() as session:
        make_cast(session)
        source = commands.create_source(session, "show", "url", "https://e.com/v", "aiko")
        commands.add_frame(session, source.id, sha(1), "frames/a.png", 0, 0.0, 64, 48)
    with registry.session() as session:
        assert session.scalar(select(Frame.id).where(Frame.identified.is_(None))) is not None
