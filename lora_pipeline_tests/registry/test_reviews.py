"""Images, approvals, rejections with feedback, and the prompt edit transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.errors import ConflictError, InvalidInputError, NotFoundError
from lora_pipeline.registry.models import Character, Feedback, Image
from lora_pipeline_tests.registry.conftest import make_cast, sha


def add(session: Session, character: Character, n: int, **kwargs: object) -> Image:
    image, created = commands.add_image(
        session, character.id, sha(n), f"images/{n}.png", 64, 64, "generated", **kwargs
    )
    assert created
    return image


def test_add_image_is_idempotent_per_character(session: Session) -> None:
    _, aiko, kenji = make_cast(session)
    image, created = commands.add_image(
        session,
        aiko.id,
        sha(1),
        "images/1.png",
        512,
        768,
        "frame",
        provenance={"video_id": "abc", "timestamp_s": 1.5},
    )
    assert created
    assert (image.status, image.provenance, image.generation_params) == (
        "pending",
        {"video_id": "abc", "timestamp_s": 1.5},
        None,
    )
    again, created = commands.add_image(
        session, aiko.id, sha(1), "images/elsewhere.png", 512, 768, "upload"
    )
    assert (again.id, created, again.origin) == (image.id, False, "frame")
    # The same picture may belong to another character (a frame with two people in it).
    other, created = commands.add_image(
        session, kenji.id, sha(1), "images/1.png", 512, 768, "frame"
    )
    assert created and other.id != image.id


def test_add_image_links_and_params(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    source = commands.create_source(session, "show", "url", "https://e.com/v", "aiko")
    frame, _ = commands.add_frame(session, source.id, sha(9), "frames/9.png", 0, 0.0, 64, 64)
    job = commands.create_generation_job(session, aiko.id, "aiko", "", 1, {"steps": 2})
    image = add(
        session,
        aiko,
        1,
        frame_id=frame.id,
        source_id=source.id,
        generation_job_id=job.id,
        generation_params={"seed": 1},
        status="skipped",
        status_reason="no face",
    )
    assert (image.frame_id, image.source_id, image.generation_job_id) == (
        frame.id,
        source.id,
        job.id,
    )
    assert (image.status, image.status_reason, image.generation_params) == (
        "skipped",
        "no face",
        {"seed": 1},
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"origin": "stolen"}, InvalidInputError, "invalid image origin 'stolen': use one of"),
        ({"status": "maybe"}, InvalidInputError, "invalid image status 'maybe'"),
        ({"path": "/tmp/x.png"}, InvalidInputError, "must be relative to the data root"),
        ({"sha256": "zz"}, InvalidInputError, "invalid sha256 'zz'"),
        ({"width": 0}, InvalidInputError, "width must be between 1 and"),
        ({"provenance": ["a"]}, InvalidInputError, "provenance must be a dict, got list"),
        ({"provenance": {"x": object()}}, InvalidInputError, "cannot be stored as JSON"),
        ({"generation_params": {"cfg": float("nan")}}, InvalidInputError, "stored as JSON"),
        ({"frame_id": 42}, NotFoundError, "unknown frame 42"),
        ({"source_id": 42}, NotFoundError, "unknown source 42"),
        ({"generation_job_id": 42}, NotFoundError, "unknown generation job 42"),
        ({"character_id": 42}, NotFoundError, "unknown character 42"),
    ],
)
def test_add_image_errors(
    session: Session, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    _, aiko, _ = make_cast(session)
    arguments: dict[str, object] = {
        "character_id": aiko.id,
        "sha256": sha(1),
        "path": "images/1.png",
        "width": 64,
        "height": 64,
        "origin": "generated",
    } | kwargs
    with pytest.raises(error, match=message):
        commands.add_image(session, **arguments)  # type: ignore[arg-type]


def test_approve_image(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    image = add(session, aiko, 1)
    approved = commands.approve_image(session, image.id, reviewer="alice")
    assert approved is image  # the session's own object, refreshed
    assert (image.status, image.reviewed_by) == ("approved", "alice")
    assert image.reviewed_at is not None
    with pytest.raises(ConflictError, match=f"^image {image.id} was already approved by alice$"):
        commands.approve_image(session, image.id, reviewer="bob")
    with pytest.raises(ConflictError, match=f"^image {image.id} was already approved by alice$"):
        commands.reject_image(session, image.id, ["bad_quality"], reviewer="bob")
    with pytest.raises(NotFoundError, match="^unknown image 999$"):
        commands.approve_image(session, 999)
    with pytest.raises(InvalidInputError, match="image id must be a whole number"):
        commands.approve_image(session, "1")  # type: ignore[arg-type]


def test_decision_message_without_reviewer_name(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    image = add(session, aiko, 1)
    commands.reject_image(session, image.id, ["not_solo"])
    with pytest.raises(ConflictError, match=f"^image {image.id} was already rejected$"):
        commands.approve_image(session, image.id, reviewer="bob")


def test_reject_image_records_feedback(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    image = add(session, aiko, 1)
    feedback = commands.reject_image(
        session,
        image.id,
        ["wrong_style", "bad_quality", "wrong_style"],
        notes=" too blurry ",
        reviewer="bob",
        negative_terms=["blurry", " ", "blurry", "3d render"],
    )
    assert feedback.id is not None
    assert (feedback.image_id, feedback.character_id) == (image.id, aiko.id)
    assert feedback.categories == ["wrong_style", "bad_quality"]
    assert (feedback.notes, feedback.reviewer, feedback.prompt_edit) == ("too blurry", "bob", None)
    assert feedback.negative_terms == ["blurry", "3d render"]
    assert feedback.regeneration_state == "queued"
    assert (image.status, image.reviewed_by) == ("rejected", "bob")
    assert image.status_reason == "wrong_style, bad_quality; too blurry"
    assert aiko.design_prompt == "teal hair"  # no prompt edit given


def test_reject_with_notes_only_or_single_category_string(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    first, second = add(session, aiko, 1), add(session, aiko, 2)
    assert commands.reject_image(session, first.id, [], notes="eyes wrong").categories == []
    assert commands.reject_image(session, second.id, "not_solo").categories == ["not_solo"]


def test_reject_validation(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    image = add(session, aiko, 1)
    with pytest.raises(InvalidInputError) as caught:
        commands.reject_image(session, image.id, ["ugly", "bad_quality"])
    assert str(caught.value) == (
        "unknown rejection category 'ugly': valid are wrong_appearance, wrong_style, "
        "bad_quality, not_solo, wrong_pose, wrong_expression"
    )
    with pytest.raises(InvalidInputError, match="needs at least one category or a note"):
        commands.reject_image(session, image.id, [], notes="  ")
    with pytest.raises(NotFoundError, match="unknown image 999"):
        commands.reject_image(session, 999, ["bad_quality"])
    assert image.status == "pending"  # nothing happened
    assert session.scalar(select(func.count(Feedback.id))) == 0


def test_prompt_edit_changes_the_design_prompt(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    image = add(session, aiko, 1)
    feedback = commands.reject_image(
        session, image.id, ["wrong_appearance"], prompt_edit="teal hair, red scarf"
    )
    assert feedback.prompt_edit == "teal hair, red scarf"
    assert commands.get_character(session, "aiko").design_prompt == "teal hair, red scarf"
    blank = add(session, aiko, 2)
    assert (
        commands.reject_image(session, blank.id, ["wrong_pose"], prompt_edit="  ").prompt_edit
        is None
    )
    assert aiko.design_prompt == "teal hair, red scarf"


def test_prompt_edit_is_rolled_back_with_the_rejection(registry: Registry) -> None:
    with registry.session() as session:
        _, aiko, _ = make_cast(session)
        image_id, other_id = add(session, aiko, 1).id, add(session, aiko, 2).id
    # A failure later in the same transaction undoes the rejection and the prompt edit.
    with pytest.raises(RuntimeError), registry.session() as session:
        commands.reject_image(session, image_id, ["wrong_appearance"], prompt_edit="new prompt")
        raise RuntimeError("crash before commit")
    # A losing reviewer's prompt edit is not applied either.
    with registry.session() as session:
        commands.approve_image(session, other_id, reviewer="alice")
    with pytest.raises(ConflictError), registry.session() as session:
        commands.reject_image(session, other_id, ["wrong_appearance"], prompt_edit="other prompt")
    with registry.session() as session:
        assert commands.get_character(session, "aiko").design_prompt == "teal hair"
        assert session.get(Image, image_id).status == "pending"  # type: ignore[union-attr]
        assert session.scalar(select(func.count(Feedback.id))) == 0


def test_mark_feedback_regeneration(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    ids = [
        commands.reject_image(session, add(session, aiko, n).id, ["bad_quality"]).id for n in (1, 2)
    ]
    commands.mark_feedback_regeneration(session, ids, "requested", run_id="run-1")
    rows = queries.feedback_after(session, 0)
    assert [(f.regeneration_state, f.regeneration_run_id) for f in rows] == [
        ("requested", "run-1"),
        ("requested", "run-1"),
    ]
    commands.mark_feedback_regeneration(session, ids[:1], "done")
    assert [f.regeneration_state for f in queries.feedback_after(session, 0)] == [
        "done",
        "requested",
    ]
    with pytest.raises(InvalidInputError, match="invalid regeneration state 'later'"):
        commands.mark_feedback_regeneration(session, ids, "later")
    with pytest.raises(NotFoundError, match="unknown feedback 998, 999"):
        commands.mark_feedback_regeneration(session, [ids[0], 999, 998], "done")


def test_numpy_numbers_are_accepted(session: Session) -> None:
    import numpy as np

    _, aiko, _ = make_cast(session)
    image, created = commands.add_image(
        session, np.int64(aiko.id), sha(1), "images/1.png", np.int64(64), np.int32(48), "frame"
    )
    assert created and (image.width, image.height) == (64, 48)
    assert type(image.width) is int
    assert commands.approve_image(session, np.int64(image.id)).status == "approved"
