"""Sort the frames of ingested sources into characters.

A frame is classified once per source (the answer is stored on the `Frame` row), then becomes a
`pending` image of every character it shows, or is left as skipped with the reason. Re-running
does no identification work twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from lora_pipeline.media.images import load_image
from lora_pipeline.media.ingest import frame_provenance
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Character, Frame, Source
from lora_pipeline.vision.identification import (
    CharacterProfile,
    Identifier,
    SourceCharacterIdentifier,
)

Log = Callable[[str], None]
BATCH_SIZE = 8


class IdentifierUnavailable(RuntimeError):
    """Project-mode sources need a vision model to sort frames; none is configured."""


@dataclass
class ClassificationStats:
    frames_classified: int = 0
    frames_cached: int = 0
    images_added: int = 0
    skipped: int = 0
    per_character: dict[str, int] = field(default_factory=dict)


def profile_of(character: Character) -> CharacterProfile:
    return CharacterProfile(character.slug, character.name, character.design_prompt)


def classify_character_sources(
    registry: Registry,
    root: DataRoot,
    character_slug: str,
    project_identifier: Identifier | None,
    log: Log,
) -> ClassificationStats:
    """Classify every finished source that can hold frames of this character."""
    stats = ClassificationStats()
    with registry.session() as session:
        character = commands.get_character(session, character_slug)
        sources = _sources_for(session, character)
        candidates = [profile_of(c) for c in character.project.characters]
        by_slug = {c.slug: c.id for c in character.project.characters}
        for source in sources:
            identifier = _identifier_for(session, source, project_identifier)
            _classify_source(session, root, source, identifier, candidates, by_slug, stats, log)
    return stats


def _sources_for(session: Session, character: Character) -> Sequence[Source]:
    query = select(Source).where(
        Source.state == "done",
        or_(
            Source.character_id == character.id,
            (Source.mode == "project") & (Source.project_id == character.project_id),
        ),
    )
    return session.scalars(query.order_by(Source.id)).all()


def _identifier_for(
    session: Session, source: Source, project_identifier: Identifier | None
) -> Identifier:
    if source.mode == "single" and source.character_id is not None:
        return SourceCharacterIdentifier(session.get(Character, source.character_id).slug)
    if project_identifier is None:
        raise IdentifierUnavailable(
            f"source {source.id} is in project mode, which needs a vision identifier "
            "(LLaVA, Ollama or reference matching); none is configured"
        )
    return project_identifier


def _classify_source(
    session: Session,
    root: DataRoot,
    source: Source,
    identifier: Identifier,
    candidates: list[CharacterProfile],
    by_slug: dict[str, int],
    stats: ClassificationStats,
    log: Log,
) -> None:
    frames = session.scalars(select(Frame).where(Frame.source_id == source.id)).all()
    todo = [f for f in frames if f.identified is None]
    stats.frames_cached += len(frames) - len(todo)
    for start in range(0, len(todo), BATCH_SIZE):
        batch = todo[start : start + BATCH_SIZE]
        images = [load_image(root.path(f.path)) for f in batch]
        answers = identifier.identify(images, candidates)
        for frame, answer in zip(batch, answers, strict=True):
            slugs = sorted(answer.slugs & by_slug.keys())
            commands.record_frame_identification(
                session, frame.id, slugs, identifier.name, answer.raw_answer
            )
            stats.frames_classified += 1
            _add_images_for(session, source, frame, slugs, by_slug, stats)
    if todo:
        log(f"source {source.id}: classified {len(todo)} frames with {identifier.name}")


def _add_images_for(
    session: Session,
    source: Source,
    frame: Frame,
    slugs: list[str],
    by_slug: dict[str, int],
    stats: ClassificationStats,
) -> None:
    if not slugs:
        stats.skipped += 1
        return
    provenance = frame_provenance(source, frame.frame_index, frame.timestamp_s)
    for slug in slugs:
        _, created = commands.add_image(
            session,
            by_slug[slug],
            frame.sha256,
            frame.path,
            frame.width,
            frame.height,
            "frame",
            provenance=provenance,
            frame_id=frame.id,
            source_id=source.id,
        )
        if created:
            stats.images_added += 1
            stats.per_character[slug] = stats.per_character.get(slug, 0) + 1
