"""Commands: every change to the registry goes through one of these functions.

Each command validates its input, raises a `RegistryError` subclass with a one-line message,
and flushes without committing: the caller's `Registry.session()` block is the transaction.
Changes that other processes may race on (reviews, job and release states) are conditional
UPDATEs checked by row count, and inserts that may race are tried inside a SAVEPOINT, so that
two reviewers, sensors or workers get one outcome and a clear message instead of a crash.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from os import PathLike
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, TypeVar

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lora_pipeline.registry.errors import (
    ConflictError,
    GateError,
    InvalidInputError,
    NotFoundError,
)
from lora_pipeline.registry.models import (
    EVAL_VERDICTS,
    IMAGE_ORIGINS,
    IMAGE_STATUSES,
    INGEST_MODES,
    REGENERATION_STATES,
    RELEASE_SCOPES,
    RELEASE_STATUSES,
    SOURCE_KINDS,
    SOURCE_STATES,
    Base,
    Character,
    ComfyuiOutputFile,
    DatasetVersion,
    Eval,
    Feedback,
    Frame,
    GenerationJob,
    Image,
    LoraRelease,
    Model,
    Project,
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
CHARACTER_SETTINGS = ("seed", "cfg", "steps", "sampler", "scheduler", "width", "height")
SOURCE_FIELDS = ("video_id", "local_path", "stats", "processed_at")

_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_TRIGGER_WORD = re.compile(r"[a-z0-9_]{2,32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PHASH = re.compile(r"[0-9a-f]{16}")
_VERSION_HASH = re.compile(r"[0-9a-f]{8,64}")
_MAX_SEED = 2**63 - 1  # BIGINT
_MAX_INT = 2**31 - 1  # INTEGER on PostgreSQL
# Allowed job transitions: new status -> the statuses it may come from.
_JOB_TRANSITIONS = {
    "running": ("pending",),
    "completed": ("pending", "running"),
    "failed": ("pending", "running"),
}

RowT = TypeVar("RowT", bound=Base)


# --- validation helpers -----------------------------------------------------------------------


def validate_slug(value: str, what: str = "slug") -> str:
    """Return `value` if it is a valid slug (a Dagster partition key and a folder name)."""
    if not isinstance(value, str) or not _SLUG.fullmatch(value):
        raise InvalidInputError(
            f"invalid {what} {value!r}: use 1 to 64 characters among lower-case letters, "
            "digits, '-' and '_', starting with a letter or a digit"
        )
    return value


def validate_trigger_word(value: str) -> str:
    """Return `value` if it is a valid LoRA trigger word (short, unique, tokenizer-safe)."""
    if (
        not isinstance(value, str)
        or not _TRIGGER_WORD.fullmatch(value)
        or not any(c.isalpha() for c in value)
    ):
        raise InvalidInputError(
            f"invalid trigger word {value!r}: use 2 to 32 characters among lower-case "
            "letters, digits and '_', with at least one letter (e.g. 'char_alice')"
        )
    return value


def _text(
    value: object, what: str, *, required: bool = False, max_length: int | None = None
) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be text, got {type(value).__name__}")
    value = value.strip()
    if required and not value:
        raise InvalidInputError(f"{what} must not be empty")
    if max_length is not None and len(value) > max_length:
        raise InvalidInputError(
            f"{what} is too long ({len(value)} characters, at most {max_length})"
        )
    return value


def _optional_text(value: object, what: str, max_length: int | None = None) -> str | None:
    if value is None:
        return None
    return _text(value, what, max_length=max_length) or None


def _whole(value: object) -> int | None:
    """`value` as an int if it is one (numpy integers included, booleans not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def _real(value: object) -> float | None:
    """`value` as a finite float if it is a number (numpy included, booleans not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: object, what: str, *, minimum: int = 0, maximum: int = _MAX_INT) -> int:
    number = _whole(value)
    if number is None:
        raise InvalidInputError(f"{what} must be a whole number, got {value!r}")
    if not minimum <= number <= maximum:
        raise InvalidInputError(f"{what} must be between {minimum} and {maximum}, got {number}")
    return number


def _id(value: object, what: str) -> int:
    number = _whole(value)
    if number is None:
        raise InvalidInputError(f"{what} id must be a whole number, got {value!r}")
    return number


def _float(value: object, what: str, *, minimum: float, maximum: float = math.inf) -> float:
    number = _real(value)
    if number is None:
        raise InvalidInputError(f"{what} must be a number, got {value!r}")
    if not minimum < number <= maximum:
        raise InvalidInputError(
            f"{what} must be above {minimum} and at most {maximum}, got {number}"
        )
    return number


def _choice(value: object, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise InvalidInputError(f"invalid {what} {value!r}: use one of {', '.join(allowed)}")
    return str(value)


def _sha256(value: object, what: str = "sha256") -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
        raise InvalidInputError(f"invalid {what} {value!r}: expected 64 hexadecimal digits")
    return value.lower()


def _relative_path(value: object, what: str) -> str:
    """A path relative to the data root (DESIGN §7), in POSIX form."""
    if isinstance(value, PathLike):
        value = value.__fspath__()
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{what} must be a non-empty path, got {value!r}")
    posix = PurePosixPath(value.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(value).drive or ".." in posix.parts:
        raise InvalidInputError(
            f"{what} {value!r} must be relative to the data root, without '..' parts"
        )
    return posix.as_posix()


def _json(value: object, what: str, expected: type) -> Any:
    if not isinstance(value, expected):
        raise InvalidInputError(f"{what} must be a {expected.__name__}, got {type(value).__name__}")
    try:
        # allow_nan=False: PostgreSQL's JSON type refuses NaN and Infinity.
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"{what} cannot be stored as JSON: {error}") from None
    return value


def _naive_utc(moment: datetime) -> datetime:
    """The registry stores naive UTC datetimes (see models.DateTime)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


# --- row helpers ------------------------------------------------------------------------------


def _get(session: Session, model: type[RowT], row_id: object, what: str) -> RowT:
    row = session.get(model, _id(row_id, what))
    if row is None:
        raise NotFoundError(f"unknown {what} {row_id}")
    return row


def _reload(session: Session, model: type[RowT], row_id: int) -> RowT:
    """The row as committed by a conditional UPDATE that bypassed the identity map."""
    row = session.get(model, row_id, populate_existing=True)
    assert row is not None  # the caller has just updated it
    return row


def _try_insert(session: Session, row: Base) -> bool:
    """Insert `row` inside a SAVEPOINT; False (and nothing inserted) on a unique violation.

    The SAVEPOINT keeps the caller's transaction usable after the error, which PostgreSQL
    would otherwise abort.
    """
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return False
    return True


def _updated_rows(session: Session, statement: Any) -> int:
    result = session.execute(statement.execution_options(synchronize_session=False))
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- projects and characters ------------------------------------------------------------------


def get_project(session: Session, slug: str) -> Project:
    project = session.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        raise NotFoundError(f"unknown project {slug!r}")
    return project


def get_character(session: Session, slug: str) -> Character:
    character = session.scalar(select(Character).where(Character.slug == slug))
    if character is None:
        raise NotFoundError(f"unknown character {slug!r}")
    return character


def get_image(session: Session, image_id: int) -> Image:
    return _get(session, Image, image_id, "image")


def add_project(
    session: Session, slug: str, name: str, description: str = "", style_prompt: str = ""
) -> Project:
    validate_slug(slug, "project slug")
    project = Project(
        slug=slug,
        name=_text(name, "project name", required=True, max_length=200),
        description=_text(description, "description"),
        style_prompt=_text(style_prompt, "style prompt"),
    )
    conflict = ConflictError(f"project {slug!r} already exists")
    if session.scalar(select(Project.id).where(Project.slug == slug)) is not None:
        raise conflict
    if not _try_insert(session, project):
        raise conflict
    return project


# Per-project settings: the eval grid's prompts and seeds, the gate's thresholds (None: that
# score does not gate) and the model card's licence fields.
_THRESHOLD_RANGES = {
    "min_identity": (-1.0, 1.0),
    "min_clip_score": (0.0, 100.0),
    "min_quality": (0.0, 1.0),
    "min_lora_effect": (0.0, 1.0),
}
LICENCE_FIELDS = ("licence", "author", "source_url", "notes")
PROJECT_SETTINGS = ("eval_prompts", "eval_seeds", *_THRESHOLD_RANGES, *LICENCE_FIELDS)
_MAX_EVAL_ROWS = 8


def _project_setting(key: str, value: object) -> Any:
    if key == "eval_prompts":
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise InvalidInputError("eval_prompts must be a list of prompts")
        prompts = [_text(p, "eval prompt", required=True, max_length=500) for p in value]
        if not 1 <= len(prompts) <= _MAX_EVAL_ROWS:
            raise InvalidInputError(f"give 1 to {_MAX_EVAL_ROWS} eval prompts (3-5 is usual)")
        return prompts
    if key == "eval_seeds":
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise InvalidInputError("eval_seeds must be a list of seeds")
        seeds = [_int(v, "eval seed", maximum=_MAX_SEED) for v in value]
        if not 1 <= len(seeds) <= _MAX_EVAL_ROWS:
            raise InvalidInputError(f"give 1 to {_MAX_EVAL_ROWS} eval seeds")
        return seeds
    if key in _THRESHOLD_RANGES:
        low, high = _THRESHOLD_RANGES[key]
        number = _real(value)
        # Inclusive at both ends: min_quality 0 or min_identity -1 mean "never fails".
        if number is None or not low <= number <= high:
            raise InvalidInputError(
                f"{key} must be a number from {low:g} to {high:g}, got {value!r}"
            )
        return number
    return _text(value, key, max_length=2000)


def update_project_settings(session: Session, slug: str, **values: Any) -> Project:
    """Set project settings (see PROJECT_SETTINGS); a value of None removes the setting."""
    project = get_project(session, slug)
    unknown = sorted(set(values) - set(PROJECT_SETTINGS))
    if unknown:
        raise InvalidInputError(
            f"unknown project setting {', '.join(unknown)}: use {', '.join(PROJECT_SETTINGS)}"
        )
    settings = dict(project.settings or {})
    for key, value in values.items():
        if value is None:
            settings.pop(key, None)
        else:
            settings[key] = _project_setting(key, value)
    project.settings = settings
    session.flush()
    return project


def _character_settings(settings: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(settings) - set(CHARACTER_SETTINGS))
    if unknown:
        raise InvalidInputError(
            f"unknown character setting {', '.join(unknown)}: valid are "
            f"{', '.join(CHARACTER_SETTINGS)}"
        )
    checked: dict[str, Any] = {}
    for name, value in settings.items():
        if name == "seed":
            checked[name] = None if value is None else _int(value, "seed", maximum=_MAX_SEED)
        elif name == "cfg":
            checked[name] = _float(value, "cfg", minimum=0.0, maximum=30.0)
        elif name == "steps":
            checked[name] = _int(value, "steps", minimum=1, maximum=1000)
        elif name in ("sampler", "scheduler"):
            checked[name] = _text(value, name, required=True, max_length=64)
        else:
            size = _int(value, name, minimum=64, maximum=4096)
            if size % 8:
                raise InvalidInputError(f"{name} must be a multiple of 8, got {size}")
            checked[name] = size
    return checked


def _trigger_word_for(slug: str, trigger_word: str | None) -> str:
    if trigger_word is not None:
        return validate_trigger_word(trigger_word)
    try:
        return validate_trigger_word(slug.replace("-", "_"))
    except InvalidInputError as error:
        raise InvalidInputError(f"{error} (derived from the slug: pass a trigger word)") from None


def add_character(
    session: Session,
    project_slug: str,
    slug: str,
    name: str,
    design_prompt: str = "",
    trigger_word: str | None = None,
    negative_prompt: str = "",
    **settings: Any,
) -> Character:
    """Add a character; its trigger word defaults to the slug with '-' replaced by '_'."""
    project = get_project(session, project_slug)
    validate_slug(slug, "character slug")
    trigger = _trigger_word_for(slug, trigger_word)
    character = Character(
        project_id=project.id,
        slug=slug,
        name=_text(name, "character name", required=True, max_length=200),
        trigger_word=trigger,
        design_prompt=_text(design_prompt, "design prompt"),
        negative_prompt=_text(negative_prompt, "negative prompt"),
        **_character_settings(settings),
    )
    existing = session.scalar(select(Character).where(Character.slug == slug))
    if existing is not None:
        raise ConflictError(f"character {slug!r} already exists")
    owner = session.scalar(select(Character.slug).where(Character.trigger_word == trigger))
    if owner is not None:
        raise ConflictError(f"trigger word {trigger!r} is already used by character {owner!r}")
    if not _try_insert(session, character):
        raise ConflictError(
            f"character {slug!r} or trigger word {trigger!r} was added at the same time by "
            "someone else"
        )
    return character


def update_design_prompt(session: Session, character_slug: str, prompt: str) -> Character:
    character = get_character(session, character_slug)
    character.design_prompt = _text(prompt, "design prompt", required=True)
    session.flush()
    return character


def update_character_settings(session: Session, character_slug: str, **settings: Any) -> Character:
    """Change generation settings (seed, cfg, steps, sampler, scheduler, width, height)."""
    character = get_character(session, character_slug)
    for name, value in _character_settings(settings).items():
        setattr(character, name, value)
    session.flush()
    return character


# --- sources and frames -----------------------------------------------------------------------


def create_source(
    session: Session,
    project_slug: str,
    kind: str,
    uri: str,
    character_slug: str | None = None,
    mode: str = "single",
    fps: float = 1.0,
    max_frames: int = 100,
) -> Source:
    """Record an ingest request; single mode names the character, project mode does not."""
    project = get_project(session, project_slug)
    _choice(kind, SOURCE_KINDS, "source kind")
    _choice(mode, INGEST_MODES, "ingest mode")
    uri = _text(uri, "source uri", required=True)
    if kind == "url" and not uri.lower().startswith(("http://", "https://")):
        raise InvalidInputError(f"source uri {uri!r} must be an http:// or https:// URL")
    character_id = None
    if mode == "single":
        if character_slug is None:
            raise InvalidInputError("single mode needs a character: pass the character slug")
        character = get_character(session, character_slug)
        if character.project_id != project.id:
            raise InvalidInputError(
                f"character {character_slug!r} is not in project {project_slug!r}"
            )
        character_id = character.id
    elif character_slug is not None:
        raise InvalidInputError(
            "project mode sorts frames into the project's characters: give no character"
        )
    source = Source(
        project_id=project.id,
        character_id=character_id,
        kind=kind,
        uri=uri,
        mode=mode,
        fps=_float(fps, "fps", minimum=0.0, maximum=120.0),
        max_frames=_int(max_frames, "max_frames", minimum=1, maximum=100_000),
        state="pending",
    )
    session.add(source)
    session.flush()
    return source


def set_source_state(
    session: Session, source_id: int, state: str, error: str | None = None, **fields: Any
) -> Source:
    """Move a source to `state`; `fields` may set video_id, local_path, stats, processed_at."""
    source = _get(session, Source, source_id, "source")
    _choice(state, SOURCE_STATES, "source state")
    unknown = sorted(set(fields) - set(SOURCE_FIELDS))
    if unknown:
        raise InvalidInputError(
            f"unknown source field {', '.join(unknown)}: valid are {', '.join(SOURCE_FIELDS)}"
        )
    if "video_id" in fields:
        source.video_id = _optional_text(fields["video_id"], "video_id", max_length=200)
    if "local_path" in fields:
        path = fields["local_path"]
        source.local_path = None if path is None else _relative_path(path, "local_path")
    if "stats" in fields:
        stats = fields["stats"]
        source.stats = None if stats is None else _json(stats, "stats", dict)
    if fields.get("processed_at") is not None:
        source.processed_at = _naive_utc(fields["processed_at"])
    elif state in ("done", "failed"):
        source.processed_at = utcnow()
    source.state = state
    source.error = _optional_text(error, "error")
    session.flush()
    return source


def add_frame(
    session: Session,
    source_id: int,
    sha256: str,
    path: str,
    frame_index: int,
    timestamp_s: float,
    width: int,
    height: int,
    phash: str | None = None,
    generation_params: dict[str, Any] | None = None,
) -> tuple[Frame, bool]:
    """Record a frame of a source; the same content twice gives the first row and False."""
    source = _get(session, Source, source_id, "source")
    digest = _sha256(sha256)
    frame = Frame(
        source_id=source.id,
        sha256=digest,
        path=_relative_path(path, "frame path"),
        frame_index=_int(frame_index, "frame_index"),
        timestamp_s=_non_negative(timestamp_s, "timestamp_s"),
        width=_int(width, "width", minimum=1),
        height=_int(height, "height", minimum=1),
        phash=_phash(phash),
        generation_params=(
            None
            if generation_params is None
            else _json(generation_params, "generation_params", dict)
        ),
    )
    lookup = select(Frame).where(Frame.source_id == source.id, Frame.sha256 == digest)
    existing = session.scalar(lookup)
    if existing is not None:
        return existing, False
    if _try_insert(session, frame):
        return frame, True
    return _existing_after_race(
        session, lookup, f"frame {digest[:12]} of source {source.id}"
    ), False


def _phash(value: object) -> str | None:
    """A perceptual hash as stored: 16 lower-case hex digits (64 bits), or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not _PHASH.fullmatch(value.lower()):
        raise InvalidInputError(f"invalid perceptual hash {value!r}: expected 16 hex digits")
    return value.lower()


def _non_negative(value: object, what: str) -> float:
    number = _real(value)
    if number is None:
        raise InvalidInputError(f"{what} must be a number, got {value!r}")
    if number < 0:
        raise InvalidInputError(f"{what} must not be negative, got {number}")
    return number


def _existing_after_race(session: Session, lookup: Any, what: str) -> Any:
    existing = session.scalar(lookup)
    if existing is None:  # the unique violation was not a duplicate of this row
        raise ConflictError(f"{what} could not be recorded: a conflicting row exists")
    return existing


def record_frame_identification(
    session: Session, frame_id: int, slugs: list[str], identifier: str, raw_answer: str
) -> Frame:
    """Store which of the project's characters appear in a frame (empty: none of them)."""
    frame = _get(session, Frame, frame_id, "frame")
    if isinstance(slugs, str) or not isinstance(slugs, Iterable):
        raise InvalidInputError(f"slugs must be a list of character slugs, got {slugs!r}")
    wanted = list(dict.fromkeys(slugs))
    source = session.get(Source, frame.source_id)
    assert source is not None  # foreign key
    known = set(
        session.scalars(
            select(Character.slug).where(
                Character.project_id == source.project_id, Character.slug.in_(wanted)
            )
        )
    )
    for slug in wanted:
        if slug not in known:
            raise InvalidInputError(
                f"unknown character {slug!r} in the project of frame {frame.id}"
            )
    frame.identified = wanted
    frame.identifier = _text(identifier, "identifier", required=True, max_length=64)
    frame.raw_answer = _text(raw_answer, "raw answer")
    frame.classified_at = utcnow()
    session.flush()
    return frame


# --- images and reviews -----------------------------------------------------------------------


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


def approve_image(session: Session, image_id: int, reviewer: str = "") -> Image:
    reviewer = _text(reviewer, "reviewer", max_length=200)
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
    reviewer = _text(reviewer, "reviewer", max_length=200)
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
    session: Session, feedback_ids: Sequence[int], state: str, run_id: str | None = None
) -> None:
    """Record that the regeneration of these rejections is queued, requested or done."""
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
                regeneration_state=state, regeneration_run_id=_optional_text(run_id, "run id", 64)
            )
        )
    session.flush()


# --- generation jobs --------------------------------------------------------------------------


def create_generation_job(
    session: Session,
    character_id: int,
    prompt: str,
    negative_prompt: str,
    seed: int,
    params: dict[str, Any],
    backend: str = "diffusers",
    feedback_ids: Sequence[int] = (),
    kind: str = "image",
    run_id: str | None = None,
) -> GenerationJob:
    character = _get(session, Character, character_id, "character")
    ids = [_id(i, "feedback") for i in dict.fromkeys(feedback_ids)]
    if ids:
        rows = session.execute(
            select(Feedback.id, Feedback.character_id).where(Feedback.id.in_(ids))
        ).tuples()
        owners = {feedback_id: owner for feedback_id, owner in rows}
        for feedback_id in ids:
            if feedback_id not in owners:
                raise NotFoundError(f"unknown feedback {feedback_id}")
            if owners[feedback_id] != character.id:
                raise InvalidInputError(
                    f"feedback {feedback_id} is about another character than {character.slug!r}"
                )
    job = GenerationJob(
        character_id=character.id,
        kind=_text(kind, "job kind", required=True, max_length=16),
        status="pending",
        backend=_text(backend, "backend", required=True, max_length=32),
        prompt=_text(prompt, "prompt", required=True),
        negative_prompt=_text(negative_prompt, "negative prompt"),
        seed=_int(seed, "seed", maximum=_MAX_SEED),
        params=_json(params, "params", dict),
        feedback_ids=ids,
        run_id=_optional_text(run_id, "run id", max_length=64),
    )
    session.add(job)
    session.flush()
    return job


def mark_job(
    session: Session,
    job_id: int,
    status: str,
    error: str | None = None,
    comfyui_prompt_id: str | None = None,
    backend: str | None = None,
) -> GenerationJob:
    """Move a job along pending -> running -> completed/failed (ConflictError otherwise);
    `backend` records what ran it when that differs from what was requested."""
    job_id = _id(job_id, "generation job")
    if status not in _JOB_TRANSITIONS:
        raise InvalidInputError(
            f"cannot mark a generation job {status!r}: use one of {', '.join(_JOB_TRANSITIONS)}"
        )
    now = utcnow()
    values: dict[str, Any] = {"status": status}
    if status == "running":
        values["started_at"] = now
    else:
        values["started_at"] = func.coalesce(GenerationJob.started_at, now)
        values["finished_at"] = now
    if error is not None:
        values["error"] = _text(error, "error")
    if comfyui_prompt_id is not None:
        values["comfyui_prompt_id"] = _text(comfyui_prompt_id, "ComfyUI prompt id", max_length=64)
    if backend is not None:
        values["backend"] = _text(backend, "backend", required=True, max_length=32)
    statement = (
        update(GenerationJob)
        .where(GenerationJob.id == job_id, GenerationJob.status.in_(_JOB_TRANSITIONS[status]))
        .values(**values)
    )
    if _updated_rows(session, statement) == 1:
        return _reload(session, GenerationJob, job_id)
    current = session.scalar(select(GenerationJob.status).where(GenerationJob.id == job_id))
    if current is None:
        raise NotFoundError(f"unknown generation job {job_id}")
    raise ConflictError(f"generation job {job_id} is {current}, it cannot become {status}")


def set_job_prompt_id(session: Session, job_id: int, prompt_id: str) -> GenerationJob:
    """Record the ComfyUI prompt a running job was queued as, so that clearing the job as
    stuck can also stop it in ComfyUI."""
    job = _get(session, GenerationJob, job_id, "generation job")
    if job.status != "running":
        raise ConflictError(f"generation job {job.id} is {job.status}, not running")
    job.comfyui_prompt_id = _text(prompt_id, "ComfyUI prompt id", required=True, max_length=64)
    session.flush()
    return job


def record_job_output(session: Session, job_id: int, relpath: str) -> GenerationJob:
    """Record the file a job made when it is not an image under review (a video clip)."""
    job = _get(session, GenerationJob, job_id, "generation job")
    job.params = dict(job.params or {}) | {"output": _relative_path(relpath, "job output")}
    session.flush()
    return job


def fail_stuck_jobs(
    session: Session, older_than: timedelta, now: datetime | None = None
) -> list[int]:
    """Fail pending jobs created, and running jobs started, more than `older_than` ago."""
    if not isinstance(older_than, timedelta) or older_than <= timedelta(0):
        raise InvalidInputError(f"older_than must be a positive timedelta, got {older_than!r}")
    now = _naive_utc(now) if now is not None else utcnow()
    cutoff = now - older_than
    since = func.coalesce(GenerationJob.started_at, GenerationJob.created_at)
    candidates = session.execute(
        select(GenerationJob.id, GenerationJob.status, since.label("since"))
        .where(
            or_(
                and_(GenerationJob.status == "pending", GenerationJob.created_at < cutoff),
                and_(GenerationJob.status == "running", since < cutoff),
            )
        )
        .order_by(GenerationJob.id)
    ).all()
    failed: list[int] = []
    for job_id, status, started in candidates:
        error = f"stuck: {status} since {started:%Y-%m-%d %H:%M:%S} UTC, longer than {older_than}"
        # Conditional on the status we saw: a job that finished meanwhile is left alone.
        statement = (
            update(GenerationJob)
            .where(GenerationJob.id == job_id, GenerationJob.status == status)
            .values(status="failed", error=error, finished_at=now)
        )
        if _updated_rows(session, statement) == 1:
            _reload(session, GenerationJob, job_id)  # the identity map may hold the old status
            failed.append(job_id)
    return failed


# --- datasets, releases, evals ----------------------------------------------------------------


def record_dataset_version(
    session: Session,
    character_id: int,
    version_hash: str,
    manifest: dict[str, Any],
    manifest_path: str,
) -> tuple[DatasetVersion, bool]:
    """Record an immutable dataset version; the same hash twice gives the first row and False."""
    character = _get(session, Character, character_id, "character")
    if not isinstance(version_hash, str) or not _VERSION_HASH.fullmatch(version_hash):
        raise InvalidInputError(
            f"invalid version hash {version_hash!r}: expected 8 to 64 lower-case hex digits"
        )
    _json(manifest, "manifest", dict)
    images = manifest.get("images")
    if not isinstance(images, list):
        raise InvalidInputError("manifest must have an 'images' list")
    version = DatasetVersion(
        character_id=character.id,
        version_hash=version_hash,
        image_count=len(images),
        manifest_path=_relative_path(manifest_path, "manifest path"),
        manifest=manifest,
    )
    lookup = select(DatasetVersion).where(
        DatasetVersion.character_id == character.id, DatasetVersion.version_hash == version_hash
    )
    existing = session.scalar(lookup)
    if existing is not None:
        return existing, False
    if _try_insert(session, version):
        return version, True
    what = f"dataset version {version_hash[:12]} of {character.slug!r}"
    return _existing_after_race(session, lookup, what), False


def register_lora_release(
    session: Session,
    character_id: int,
    dataset_version_id: int | None,
    path: str,
    sha256: str,
    base_checkpoint: str | None,
    hyperparameters: dict[str, Any],
    scope: str = "project",
    base_model_version: str = "sd15",
    parent_release_id: int | None = None,
) -> LoraRelease:
    """Register a trained LoRA as a candidate release, with its row in `models`.

    The checkpoint is stored by its `checkpoint_key` (the full path stays in the
    hyperparameters). Registering the same file (sha256) again for the character returns the
    existing release.
    """
    character = _get(session, Character, character_id, "character")
    if dataset_version_id is not None:
        version = _get(session, DatasetVersion, dataset_version_id, "dataset version")
        if version.character_id != character.id:
            raise InvalidInputError(
                f"dataset version {version.id} belongs to another character than {character.slug!r}"
            )
        dataset_version_id = version.id
    digest = _sha256(sha256)
    release_path = _relative_path(path, "LoRA path")
    existing = session.scalar(
        select(LoraRelease).where(
            LoraRelease.character_id == character.id, LoraRelease.sha256 == digest
        )
    )
    if existing is not None:
        return existing
    if parent_release_id is not None:
        parent = _get(session, LoraRelease, parent_release_id, "parent release")
        if parent.character_id != character.id:
            raise InvalidInputError(f"release {parent.id} belongs to another character")
        parent_release_id = parent.id
    release = LoraRelease(
        parent_release_id=parent_release_id,
        character_id=character.id,
        dataset_version_id=dataset_version_id,
        base_checkpoint=checkpoint_key(_optional_text(base_checkpoint, "base checkpoint")),
        path=release_path,
        sha256=digest,
        status="candidate",
        scope=_choice(scope, RELEASE_SCOPES, "release scope"),
        hyperparameters=_json(hyperparameters, "hyperparameters", dict),
    )
    number = 1 + (
        session.scalar(
            select(func.count(LoraRelease.id)).where(LoraRelease.character_id == character.id)
        )
        or 0
    )
    model = _insert_lora_model(
        session,
        names=(f"{character.slug}-v{number}", f"{character.slug}-v{number}-{digest[:8]}"),
        path=release_path,
        sha256=digest,
        base_model_version=_text(
            base_model_version, "base model version", required=True, max_length=64
        ),
    )
    release.model_id = model.id
    session.add(release)
    session.flush()
    return release


def _insert_lora_model(
    session: Session, names: Sequence[str], path: str, sha256: str, base_model_version: str
) -> Model:
    """Insert the Model row under the first free name (a concurrent release may take one)."""
    for name in names:
        model = Model(
            name=name, kind="lora", path=path, sha256=sha256, base_model_version=base_model_version
        )
        if session.scalar(select(Model.id).where(Model.name == name)) is None and _try_insert(
            session, model
        ):
            return model
    raise ConflictError(f"model names {', '.join(names)} are all taken")


# Release transitions: new status -> the statuses it may come from. A rejected release stays
# rejected; making an active release "approved" takes it out of production.
_RELEASE_TRANSITIONS = {
    "approved": ("candidate", "approved", "active"),
    "active": ("candidate", "approved", "active"),
    "rejected": ("candidate", "approved", "active", "rejected"),
    "candidate": ("candidate",),
}


def checkpoint_key(checkpoint: str | None) -> str:
    """The name a checkpoint is known by wherever it lives: the file or folder name without a
    weights suffix, so that the trainer's `/models/anything-v5.safetensors`, ComfyUI's
    `anything-v5.safetensors` and a diffusers folder `anything-v5/` are one checkpoint."""
    name = PurePosixPath(str(checkpoint or "").replace("\\", "/").rstrip("/")).name
    for suffix in (".safetensors", ".ckpt", ".pt", ".bin"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _check_gate(session: Session, release: LoraRelease, status: str) -> None:
    """Approval and activation need the release's latest eval to have passed the gate (an
    approved release re-evaluated below a raised threshold cannot be activated either);
    taking an active release out of production (active -> approved) needs nothing."""
    approving = status == "approved" and release.status == "candidate"
    activating = status == "active" and release.status != "active"
    if not (approving or activating):
        return
    latest = session.scalar(
        select(Eval).where(Eval.lora_release_id == release.id).order_by(Eval.id.desc()).limit(1)
    )
    if latest is None:
        raise GateError(
            f"release {release.id} has not been evaluated yet; run eval_grid before "
            f"making it {status}"
        )
    if latest.verdict != "pass":
        reasons = "; ".join((latest.scores or {}).get("gate_reasons") or []) or latest.verdict
        raise GateError(
            f"release {release.id} did not pass the evaluation gate (eval {latest.id}: "
            f"{reasons}); it cannot be made {status}"
        )


def set_release_status(session: Session, release_id: int, status: str) -> LoraRelease:
    """Move a release along candidate -> approved -> active, or to rejected.

    Approving or activating needs a passing eval (`GateError` otherwise). Making one active
    demotes the previous active release of the character on the same checkpoint to approved
    (and, for a baseline release, the previous active baseline of that checkpoint), so
    production generations use exactly one LoRA of each kind.
    """
    release = _get(session, LoraRelease, release_id, "LoRA release")
    _choice(status, RELEASE_STATUSES, "release status")
    if release.status not in _RELEASE_TRANSITIONS[status]:
        raise ConflictError(f"release {release.id} is {release.status}; it cannot become {status}")
    _check_gate(session, release, status)
    character = session.get(Character, release.character_id)
    assert character is not None  # foreign key
    try:
        # Inside the SAVEPOINT, so that a unique violation leaves the caller's session usable.
        with session.begin_nested():
            if status == "active" and release.status != "active":
                _demote_active(session, release)
            # Conditional on the status this decision was made on: of two reviewers deciding
            # at once, the second is told instead of silently overriding the first.
            statement = (
                update(LoraRelease)
                .where(LoraRelease.id == release.id, LoraRelease.status == release.status)
                .values(status=status)
            )
            if _updated_rows(session, statement) != 1:
                raise ConflictError(
                    f"release {release.id} was changed by someone else meanwhile; reload and "
                    "try again"
                )
    except IntegrityError:
        # The partial unique indexes: another session activated a release meanwhile.
        raise ConflictError(
            f"another release of character {character.slug!r} was made active at the same "
            "time; try again"
        ) from None
    return _reload(session, LoraRelease, release.id)


def _demote_active(session: Session, release: LoraRelease) -> None:
    # A project release's slot is its character and checkpoint; a baseline release's is the
    # checkpoint alone, whichever character's partition trained it.
    same_slot = and_(
        LoraRelease.scope == release.scope,
        LoraRelease.base_checkpoint == release.base_checkpoint,
    )
    if release.scope == "project":
        same_slot = and_(same_slot, LoraRelease.character_id == release.character_id)
    session.execute(
        update(LoraRelease)
        .where(same_slot, LoraRelease.status == "active", LoraRelease.id != release.id)
        .values(status="approved")
    )


def select_release_file(
    session: Session, release_id: int, path: str, sha256: str, epoch: int
) -> LoraRelease:
    """Point a candidate release at the file of its best saved epoch (chosen by evaluation)."""
    release = _get(session, LoraRelease, release_id, "LoRA release")
    if release.status != "candidate":
        raise ConflictError(
            f"release {release.id} is {release.status}; only a candidate can change its file"
        )
    hyperparameters = dict(release.hyperparameters or {})
    # The trainer's last file stays known, so a re-evaluation compares the same epochs.
    hyperparameters.setdefault("final_file", release.path)
    release.path = _relative_path(path, "LoRA path")
    release.sha256 = _sha256(sha256)
    release.hyperparameters = hyperparameters | {"selected_epoch": epoch}
    if release.model_id is not None:
        model = session.get(Model, release.model_id)
        if model is not None:
            model.path, model.sha256 = release.path, release.sha256
    session.flush()
    return release


def record_eval(
    session: Session,
    release_id: int,
    settings: dict[str, Any],
    grid_path: str,
    image_paths: Sequence[str],
    scores: dict[str, Any],
    verdict: str,
) -> Eval:
    release = _get(session, LoraRelease, release_id, "LoRA release")
    if isinstance(image_paths, str):
        raise InvalidInputError("image_paths must be a list of paths, not one string")
    evaluation = Eval(
        lora_release_id=release.id,
        settings=_json(settings, "eval settings", dict),
        grid_path=_relative_path(grid_path, "grid path"),
        image_paths=[_relative_path(p, "eval image path") for p in image_paths],
        scores=_json(scores, "scores", dict),
        verdict=_choice(verdict, EVAL_VERDICTS, "eval verdict"),
    )
    session.add(evaluation)
    session.flush()
    return evaluation


# --- perceptual hashes and ComfyUI outputs (ingest) -------------------------------------------


def set_image_phash(session: Session, image_id: int, phash: str) -> Image:
    """Store the perceptual hash of an image added without one (computed from its file)."""
    image = _get(session, Image, image_id, "image")
    image.phash = _phash(phash)
    session.flush()
    return image


def record_comfyui_output(
    session: Session,
    relpath: str,
    size: int,
    mtime_ns: int,
    source_id: int | None = None,
    note: str | None = None,
) -> tuple[ComfyuiOutputFile, bool]:
    """Remember a file of the ComfyUI output folder; the same file twice gives the first row
    and False, so that two scans racing record (and ingest) it once."""
    if source_id is not None:
        source_id = _get(session, Source, source_id, "source").id
    relpath = _relative_path(relpath, "ComfyUI output path")
    row = ComfyuiOutputFile(
        relpath=relpath,
        size=_int(size, "size", maximum=_MAX_SEED),
        mtime_ns=_int(mtime_ns, "mtime_ns", maximum=_MAX_SEED),
        source_id=source_id,
        note=_optional_text(note, "note"),
    )
    lookup = select(ComfyuiOutputFile).where(
        ComfyuiOutputFile.relpath == relpath,
        ComfyuiOutputFile.size == row.size,
        ComfyuiOutputFile.mtime_ns == row.mtime_ns,
    )
    existing = session.scalar(lookup)
    if existing is not None:
        return existing, False
    if _try_insert(session, row):
        return row, True
    return _existing_after_race(session, lookup, f"ComfyUI output {relpath}"), False
