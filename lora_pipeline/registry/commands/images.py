"""Commands on images, their review decisions and the rejections' feedback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lora_pipeline.registry.commands._rows import (
    _existing_after_race,
    _get,
    _reload,
    _try_insert,
    _updated_rows,
)
from lora_pipeline.registry.commands._validate import (
    _choice,
    _id,
    _int,
    _json,
    _optional_text,
    _phash,
    _relative_path,
    _sha256,
    _text,
)
from lora_pipeline.registry.errors import ConflictError, InvalidInputError, NotFoundError
from lora_pipeline.registry.models import (
    IMAGE_ORIGINS,
    IMAGE_STATUSES,
    REGENERATION_STATES,
    Character,
    Feedback,
    Frame,
    GenerationJob,
    Image,
    Source,
    utcnow,
)

REJECTION_CATEGORIES = (
    "wrong_appearance",
    "wrong_style",
    "bad_quality",
    "not_solo",
    "wrong_pose",
    "wrong_expression",
)


def get_image(session: Session, image_id: int) -> Image:
    return _get(session, Image, image_id, "image")


def add_image(
    session: Session,
    character_id: int,
    sha256: str,
    path: str,
    width: int,
    height: int,
    origin: str,
    provenance: dict[str, Any] | None = None,
    status: str = "pending",
    frame_id: int | None = None,
    source_id: int | None = None,
    generation_job_id: int | None = None,
    generation_params: dict[str, Any] | None = None,
    status_reason: str | None = None,
    phash: str | None = None,
) -> tuple[Image, bool]:
    """Add an image of a character; the same content twice gives the first row and False.

    Safe when two sessions add the same image at once: the loser of the insert returns the
    winner's row.
    """
    character = _get(session, Character, character_id, "character")
    digest = _sha256(sha256)
    frame_id = None if frame_id is None else _get(session, Frame, frame_id, "frame").id
    source_id = None if source_id is None else _get(session, Source, source_id, "source").id
    if generation_job_id is not None:
        generation_job_id = _get(session, GenerationJob, generation_job_id, "generation job").id
    image = Image(
        character_id=character.id,
        sha256=digest,
        path=_relative_path(path, "image path"),
        width=_int(width, "width", minimum=1),
        height=_int(height, "height", minimum=1),
        origin=_choice(origin, IMAGE_ORIGINS, "image origin"),
        status=_choice(status, IMAGE_STATUSES, "image status"),
        status_reason=_optional_text(status_reason, "status reason"),
        frame_id=frame_id,
        source_id=source_id,
        generation_job_id=generation_job_id,
        provenance={} if provenance is None else _json(provenance, "provenance", dict),
        generation_params=(
            None
            if generation_params is None
            else _json(generation_params, "generation_params", dict)
        ),
        phash=_phash(phash),
    )
    lookup = select(Image).where(Image.character_id == character.id, Image.sha256 == digest)
    existing = session.scalar(lookup)
    if existing is not None:
        return existing, False
    if _try_insert(session, image):
        return image, True
    what = f"image {digest[:12]} of character {character.slug!r}"
    return _existing_after_race(session, lookup, what), False


def _decide(
    session: Session, image_id: object, status: str, reviewer: str, reason: str | None
) -> Image:
    """Move a pending image to `status`, exactly once whatever the number of reviewers.

    The WHERE status = 'pending' makes the database pick the winner: on PostgreSQL the second
    UPDATE waits for the first to commit and then matches no row; on SQLite writers are
    serialised by BEGIN IMMEDIATE.
    """
    image_id = _id(image_id, "image")
    statement = (
        update(Image)
        .where(Image.id == image_id, Image.status == "pending")
        .values(
            status=status, reviewed_by=reviewer or None, reviewed_at=utcnow(), status_reason=reason
        )
    )
    if _updated_rows(session, statement) == 1:
        return _reload(session, Image, image_id)
    current = session.execute(
        select(Image.status, Image.reviewed_by).where(Image.id == image_id)
    ).one_or_none()
    if current is None:
        raise NotFoundError(f"unknown image {image_id}")
    by = f" by {current.reviewed_by}" if current.reviewed_by else ""
    raise ConflictError(f"image {image_id} was already {current.status}{by}")


MAX_REVIEWER_LENGTH = 200


def reviewer_name(value: object) -> str:
    """A reviewer's name where one is required (the review app asks for it once)."""
    return _text(value, "reviewer name", required=True, max_length=MAX_REVIEWER_LENGTH)


def approve_image(session: Session, image_id: int, reviewer: str = "") -> Image:
    reviewer = _text(reviewer, "reviewer", max_length=MAX_REVIEWER_LENGTH)
    return _decide(session, image_id, "approved", reviewer, None)


def _categories(categories: Sequence[str]) -> list[str]:
    if isinstance(categories, str):
        categories = [categories]
    chosen = list(dict.fromkeys(categories))
    unknown = [c for c in chosen if c not in REJECTION_CATEGORIES]
    if unknown:
        raise InvalidInputError(
            f"unknown rejection category {', '.join(map(repr, unknown))}: valid are "
            f"{', '.join(REJECTION_CATEGORIES)}"
        )
    return chosen


def reject_image(
    session: Session,
    image_id: int,
    categories: Sequence[str],
    notes: str = "",
    prompt_edit: str | None = None,
    reviewer: str = "",
    negative_terms: Sequence[str] = (),
) -> Feedback:
    """Reject a pending image with feedback; a prompt edit changes the character's design
    prompt in the same transaction."""
    chosen = _categories(categories)
    notes = _text(notes, "notes")
    if not chosen and not notes:
        raise InvalidInputError(
            "a rejection needs at least one category or a note; categories are "
            f"{', '.join(REJECTION_CATEGORIES)}"
        )
    if isinstance(negative_terms, str):
        negative_terms = [negative_terms]
    terms = [t for t in (_text(t, "negative term") for t in negative_terms) if t]
    edit = _optional_text(prompt_edit, "prompt edit")
    reviewer = _text(reviewer, "reviewer", max_length=MAX_REVIEWER_LENGTH)
    reason = "; ".join(part for part in (", ".join(chosen), notes) if part)
    image = _decide(session, image_id, "rejected", reviewer, reason)
    feedback = Feedback(
        image_id=image.id,
        character_id=image.character_id,
        categories=chosen,
        notes=notes,
        prompt_edit=edit,
        negative_terms=list(dict.fromkeys(terms)),
        reviewer=reviewer,
        regeneration_state="queued",
    )
    session.add(feedback)
    if edit:
        character = session.get(Character, image.character_id)
        assert character is not None  # foreign key
        character.design_prompt = edit
    session.flush()
    return feedback


def mark_feedback_regeneration(
    session: Session,
    feedback_ids: Sequence[int],
    state: str,
    run_id: str | None = None,
    image_id: int | None = None,
) -> None:
    """Record that the regeneration of these rejections is queued, requested, done (with the
    new image it made) or failed, and the Dagster run that answered them."""
    _choice(state, REGENERATION_STATES, "regeneration state")
    ids = sorted({_id(i, "feedback") for i in feedback_ids})
    found = set(session.scalars(select(Feedback.id).where(Feedback.id.in_(ids))))
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFoundError(f"unknown feedback {', '.join(map(str, missing))}")
    if ids:
        session.execute(
            update(Feedback)
            .where(Feedback.id.in_(ids))
            .values(
                regeneration_state=state,
                regeneration_run_id=_optional_text(run_id, "run id", 64),
                regeneration_image_id=None if image_id is None else _id(image_id, "image"),
            )
        )
    session.flush()


def set_image_phash(session: Session, image_id: int, phash: str) -> Image:
    """Store the perceptual hash of an image added without one (computed from its file)."""
    image = _get(session, Image, image_id, "image")
    image.phash = _phash(phash)
    session.flush()
    return image


# Seed 003's tag queries: an asset type is the tag `asset_type:<type>` (one per image).
ASSET_TYPE_PREFIX = "asset_type:"
MAX_TAG_LENGTH = 64


def _tag(value: object) -> str:
    tag = _text(value, "tag", required=True, max_length=MAX_TAG_LENGTH)
    if "," in tag or any(c.isspace() and c != " " for c in tag):
        raise InvalidInputError(f"tag {tag!r} may not hold commas, tabs or line breaks")
    return tag


def stored_tags(image: Image) -> list[str]:
    """The tags stored in an image's provenance (a list; a mapping reads as key:value)."""
    raw = (image.provenance or {}).get("tags")
    if isinstance(raw, dict):
        return [f"{key}:{value}" for key, value in raw.items()]
    return [str(tag) for tag in raw] if isinstance(raw, list) else []


def tag_images(
    session: Session,
    image_ids: Sequence[int],
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
    asset_type: str | None = None,
) -> list[Image]:
    """Add and remove tags (case-insensitively) and set the asset type of each image; the
    tags live in the image's provenance, where dataset selection reads them."""
    added, removed = [_tag(t) for t in add], {_tag(t).casefold() for t in remove}
    if asset_type is not None:
        added.append(_tag(ASSET_TYPE_PREFIX + _text(asset_type, "asset type", required=True)))
    images = [get_image(session, _id(image_id, "image")) for image_id in image_ids]
    for image in images:
        kept = [t for t in stored_tags(image) if t.casefold() not in removed]
        if asset_type is not None:
            kept = [t for t in kept if not t.casefold().startswith(ASSET_TYPE_PREFIX)]
        tags = list(dict.fromkeys(kept + added).keys())
        # A new dict: the JSON column sees the change.
        image.provenance = {**(image.provenance or {}), "tags": tags}
    session.flush()
    return images
