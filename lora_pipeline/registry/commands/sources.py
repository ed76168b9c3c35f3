"""Commands on sources (ingest requests) and the frames extracted from them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from lora_pipeline.registry.commands._rows import (
    _existing_after_race,
    _get,
    _try_insert,
    _updated_rows,
)
from lora_pipeline.registry.commands._validate import (
    _choice,
    _float,
    _int,
    _json,
    _naive_utc,
    _non_negative,
    _optional_text,
    _phash,
    _relative_path,
    _sha256,
    _text,
)
from lora_pipeline.registry.commands.characters import get_character
from lora_pipeline.registry.commands.projects import get_project
from lora_pipeline.registry.errors import ConflictError, InvalidInputError
from lora_pipeline.registry.models import (
    INGEST_MODES,
    SOURCE_KINDS,
    SOURCE_STATES,
    Character,
    Frame,
    Source,
    utcnow,
)

SOURCE_FIELDS = ("video_id", "local_path", "stats", "processed_at", "run_id", "started_at")


def without_credentials(url: str) -> str:
    """The URL without a user name or password: they would show on every page and log."""
    try:
        parts = urlsplit(url)
        if "@" not in parts.netloc:
            return url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=host))
    except ValueError as exc:
        raise InvalidInputError(f"not a valid URL: {exc}") from exc


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
    if kind == "url":
        if not uri.lower().startswith(("http://", "https://")):
            # Not echoed: whatever it is may hold a password.
            scheme = uri.partition(":")[0] if ":" in uri[:12] else ""
            shown = f"{scheme!r} URLs" if scheme.isalpha() else "local paths or other text"
            raise InvalidInputError(f"a source must be an http:// or https:// URL, not {shown}")
        uri = without_credentials(uri)
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
    if "run_id" in fields:
        source.run_id = _optional_text(fields["run_id"], "run_id", max_length=64)
    if fields.get("started_at") is not None:
        source.started_at = _naive_utc(fields["started_at"])
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
    """Record a frame of a source; the same content, or the same frame index (a rerun after a
    kill samples the video again), gives the first row and False."""
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
    lookup = select(Frame).where(
        Frame.source_id == source.id,
        or_(Frame.sha256 == digest, Frame.frame_index == frame.frame_index),
    )
    existing = session.scalars(lookup.order_by(Frame.id)).first()
    if existing is not None:
        return existing, False
    if _try_insert(session, frame):
        return frame, True
    return _existing_after_race(
        session, lookup.order_by(Frame.id).limit(1), f"frame {digest[:12]} of source {source.id}"
    ), False


def retry_source(session: Session, source_id: int) -> Source:
    """Put a failed source back to pending, so the ingest sensor takes it again (it keeps the
    time its failed run ended, which tells the sensor it is a retry)."""
    source = _get(session, Source, source_id, "source")
    if source.state == "pending":
        return source
    if source.state != "failed":
        raise ConflictError(
            f"source {source.id} is {source.state}: only a failed source can be retried"
        )
    changed = _updated_rows(
        session,
        update(Source)
        .where(Source.id == source.id, Source.state == "failed")
        # processed_at stays: it marks a retried source (and keys the sensor's new run).
        .values(state="pending", error=None, run_id=None, started_at=None),
    )
    if not changed:
        raise ConflictError(f"source {source.id} changed meanwhile; look again")
    session.refresh(source)
    return source


def fail_dead_sources(
    session: Session, is_alive: Callable[[Source], bool], reason: Callable[[Source], str]
) -> list[int]:
    """Mark failed every running source whose run `is_alive` says has ended; returns their
    ids. A source whose run finishes meanwhile keeps the state that run gave it."""
    running = session.scalars(select(Source).where(Source.state == "running").order_by(Source.id))
    failed: list[int] = []
    for source in list(running):
        if is_alive(source):
            continue
        changed = _updated_rows(
            session,
            update(Source)
            .where(
                Source.id == source.id,
                Source.state == "running",
                _same(Source.run_id, source.run_id),
            )
            .values(state="failed", error=reason(source), processed_at=utcnow()),
        )
        if changed:
            failed.append(source.id)
    session.expire_all()
    return failed


def _same(column: Any, value: str | None) -> Any:
    return column.is_(None) if value is None else column == value


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
