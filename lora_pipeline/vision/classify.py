"""Sort the frames of ingested sources into characters.

A frame is classified once per source (the answer is stored on the `Frame` row), then becomes a
`pending` image of every character it shows, unless it nearly repeats an image that character
already has. Re-running does no identification work twice: classified frames are skipped, and
a picture already classified by the same model in another source of the project reuses that
answer. Model calls happen outside any registry transaction; each batch is committed as soon
as it is answered, so a crash loses at most one batch of work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from lora_pipeline.dataset.kohya_layout import MIN_PER_SHOT
from lora_pipeline.dataset.shots import shot_type_for_ratio
from lora_pipeline.errors import PipelineError
from lora_pipeline.media.images import load_image
from lora_pipeline.media.ingest import dataset_hash_index, frame_provenance
from lora_pipeline.media.phash import (
    DEFAULT_NEAR_DUPLICATE_DISTANCE,
    HashIndex,
    hash_from_hex,
    hash_to_hex,
    perceptual_hash,
)
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.commands import clusters as cluster_commands
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Character, Frame, Source
from lora_pipeline.registry.models import Image as ImageRow
from lora_pipeline.vision.faces import FaceDetector
from lora_pipeline.vision.identification import (
    CharacterProfile,
    Identification,
    Identifier,
    SourceCharacterIdentifier,
)
from lora_pipeline.vision.persons import PersonCrop, find_persons, head_share, stage_boxes
from lora_pipeline.vision.reference import ReferenceImage, ReferenceSource

Log = Callable[[str], None]
BATCH_SIZE = 8
# Image origin by source kind (registry IMAGE_ORIGINS).
_ORIGINS = {
    "url": "frame",
    "video_upload": "frame",
    "image_upload": "upload",
    "comfyui_output": "comfyui",
}
_REASON_CHARS = 300


class IdentifierUnavailable(PipelineError, RuntimeError):
    """Project-mode sources need a vision model to sort frames; none is configured."""


@dataclass(frozen=True)
class ClassifyOptions:
    """`persons` (an anime person detector) turns on crops in project mode: each person is
    identified alone and becomes a crop of its character; `heads` adds the three-stage crops a
    dataset lacks. `whole_frames` also files a whole frame showing several characters under
    each of them (off: such a frame goes into no dataset)."""

    near_duplicate_distance: int | None = DEFAULT_NEAR_DUPLICATE_DISTANCE
    batch_size: int = BATCH_SIZE
    persons: FaceDetector | None = None
    heads: FaceDetector | None = None
    crop_margin: float = 0.15
    whole_frames: bool = False


@dataclass(frozen=True)
class UnrecognisedPerson:
    """A person no candidate was recognised in: material for new characters (clustering)."""

    frame_id: int
    box: tuple[int, int, int, int]


@dataclass
class ClassificationStats:
    frames_classified: int = 0
    # Classified in an earlier run: not looked at again.
    frames_cached: int = 0
    # The same picture was classified by the same model in another source: answer reused.
    frames_reused: int = 0
    images_added: int = 0
    skipped: int = 0
    near_duplicates: int = 0
    per_character: dict[str, int] = field(default_factory=dict)
    added_paths: list[str] = field(default_factory=list)
    # Whole frames showing several characters, kept out of every dataset (see whole_frames).
    multi_character_frames: int = 0
    persons_detected: int = 0
    crops_added: int = 0
    crops_not_solo: int = 0
    # Three-stage crops (upper body, head) made for shot types a dataset lacked.
    crops_derived: int = 0
    # A crop in which the identifier saw more than one character: in no dataset.
    crops_ambiguous: int = 0
    unrecognised: list[UnrecognisedPerson] = field(default_factory=list)


@dataclass(frozen=True)
class _SourceInfo:
    id: int
    kind: str
    mode: str
    character_slug: str | None


@dataclass(frozen=True)
class _FrameInfo:
    """The frame columns classification reads, copied out of the session that loaded them."""

    id: int
    sha256: str
    path: str
    frame_index: int
    timestamp_s: float
    width: int
    height: int
    phash: str | None
    generation_params: dict | None

    @classmethod
    def of(cls, frame: Frame) -> _FrameInfo:
        return cls(
            frame.id,
            frame.sha256,
            frame.path,
            frame.frame_index,
            frame.timestamp_s,
            frame.width,
            frame.height,
            frame.phash,
            frame.generation_params,
        )


@dataclass
class _Context:
    """What a classification run shares across sources."""

    registry: Registry
    root: DataRoot
    project_id: int
    candidates: list[CharacterProfile]
    by_slug: dict[str, int]
    options: ClassifyOptions
    stats: ClassificationStats
    log: Log
    dataset_indexes: dict[str, HashIndex] = field(default_factory=dict)
    # slug -> shot type -> the character's pending and approved images of it (crop provenance).
    shot_counts: dict[str, dict[str, int]] = field(default_factory=dict)


def profile_of(character: Character) -> CharacterProfile:
    return CharacterProfile(character.slug, character.name, character.design_prompt)


def registry_references(registry: Registry, root: DataRoot) -> ReferenceSource:
    """Reference images for reference matching: each character's approved images."""

    def references(slug: str) -> list[ReferenceImage]:
        with registry.session(readonly=True) as session:
            character = commands.get_character(session, slug)
            approved = queries.approved_images(session, character.id)
            return [ReferenceImage(image.sha256, root.path(image.path)) for image in approved]

    return references


def classify_character_sources(
    registry: Registry,
    root: DataRoot,
    character_slug: str,
    project_identifier: Identifier | None,
    log: Log,
    options: ClassifyOptions | None = None,
) -> ClassificationStats:
    """Classify every finished source that can hold frames of this character.

    Project-mode sources need `project_identifier`; without one they are left unclassified and
    IdentifierUnavailable is raised after the other sources are done.
    """
    options = options or ClassifyOptions()
    stats = ClassificationStats()
    with registry.session(readonly=True) as session:
        character = commands.get_character(session, character_slug)
        context = _Context(
            registry,
            root,
            character.project_id,
            [profile_of(c) for c in character.project.characters],
            {c.slug: c.id for c in character.project.characters},
            options,
            stats,
            log,
        )
        sources = _sources_for(session, character)
    waiting = []
    for source in sources:
        identifier = _identifier_for(source, project_identifier)
        if identifier is None:
            waiting.append(source.id)
            continue
        _classify_source(context, source, identifier)
    if waiting:
        raise IdentifierUnavailable(
            f"project-mode sources {', '.join(map(str, waiting))} need a vision identifier to "
            "sort their frames (set LORA_PIPELINE_IDENTIFIER to llava:<model>, "
            "ollama:<url>#<model> or reference:<model>); their frames wait unclassified"
        )
    return stats


def _sources_for(session: Session, character: Character) -> list[_SourceInfo]:
    query = select(Source).where(
        Source.state == "done",
        or_(
            Source.character_id == character.id,
            (Source.mode == "project") & (Source.project_id == character.project_id),
        ),
    )
    infos = []
    for source in session.scalars(query.order_by(Source.id)):
        owner = session.get(Character, source.character_id) if source.character_id else None
        infos.append(
            _SourceInfo(source.id, source.kind, source.mode, owner.slug if owner else None)
        )
    return infos


def _identifier_for(
    source: _SourceInfo, project_identifier: Identifier | None
) -> Identifier | None:
    """Single mode: the configured model checks the frames, or the source's word is taken
    (always for a ComfyUI file whose name named the character). Project mode: the model."""
    if source.mode == "single" and source.character_slug is not None:
        if project_identifier is None or source.kind == "comfyui_output":
            return SourceCharacterIdentifier(source.character_slug)
        return project_identifier
    return project_identifier


def _classify_source(context: _Context, source: _SourceInfo, identifier: Identifier) -> None:
    with context.registry.session(readonly=True) as session:
        todo = [
            _FrameInfo.of(frame)
            for frame in session.scalars(
                select(Frame)
                .where(Frame.source_id == source.id, Frame.identified.is_(None))
                .order_by(Frame.frame_index, Frame.id)
            )
        ]
        context.stats.frames_cached += (
            session.scalar(
                select(func.count(Frame.id)).where(
                    Frame.source_id == source.id, Frame.identified.is_not(None)
                )
            )
            or 0
        )
        crops = context.options.persons is not None and source.mode == "project"
        # A frame's answer says nothing about each person in it: crops are always identified.
        reused = {} if crops else _earlier_answers(session, context.project_id, identifier, todo)
    size = context.options.batch_size
    for start in range(0, len(todo), size):
        batch = todo[start : start + size]
        if crops:
            _classify_persons(context, source, identifier, batch)
            continue
        answers = _answers(context, identifier, batch, reused)
        with context.registry.session() as session:
            for frame, answer in zip(batch, answers, strict=True):
                _record(session, context, source, frame, identifier, answer)
    if todo:
        context.log(f"source {source.id}: classified {len(todo)} frames with {identifier.name}")


def _earlier_answers(
    session: Session, project_id: int, identifier: Identifier, frames: Sequence[_FrameInfo]
) -> dict[str, Identification]:
    """Answers the same model gave for the same pictures in other sources of the project."""
    if not frames or not getattr(identifier, "answers_are_stable", True):
        return {}
    if isinstance(identifier, SourceCharacterIdentifier):
        return {}  # no model work to save, and its answer depends on the source
    shas = sorted({frame.sha256 for frame in frames})
    rows = session.execute(
        select(Frame.sha256, Frame.identified, Frame.raw_answer)
        .join(Source, Source.id == Frame.source_id)
        .where(
            Source.project_id == project_id,
            Frame.identifier == identifier.name,
            Frame.identified.is_not(None),
            Frame.sha256.in_(shas),
        )
        .order_by(Frame.id)
    )
    return {sha: Identification(frozenset(slugs or []), raw or "") for sha, slugs, raw in rows}


def _answers(
    context: _Context,
    identifier: Identifier,
    batch: Sequence[_FrameInfo],
    reused: dict[str, Identification],
) -> list[Identification]:
    """The identifier's answer for each frame; only frames never classified reach the model."""
    fresh = [frame for frame in batch if frame.sha256 not in reused]
    images = [load_image(context.root.path(frame.path)) for frame in fresh]
    answered = iter(identifier.identify(images, context.candidates) if images else [])
    context.stats.frames_reused += len(batch) - len(fresh)
    return [reused[f.sha256] if f.sha256 in reused else next(answered) for f in batch]


def _record(
    session: Session,
    context: _Context,
    source: _SourceInfo,
    frame: _FrameInfo,
    identifier: Identifier,
    answer: Identification,
) -> None:
    recognised = sorted(answer.slugs & context.by_slug.keys())
    commands.record_frame_identification(
        session, frame.id, recognised, identifier.name, answer.raw_answer
    )
    context.stats.frames_classified += 1
    row = session.get(Source, source.id)
    assert row is not None  # the source's frames are being recorded
    if source.mode == "single" and source.character_slug is not None:
        keep = [s for s in recognised if s == source.character_slug]
        if not keep:
            _skip_for_character(session, context, row, frame, identifier, answer)
            return
    else:
        keep = recognised
    if not keep:
        context.stats.skipped += 1
        return
    if len(keep) > 1 and not context.options.whole_frames:
        # A LoRA trained on it would learn both characters (the guide's "not solo").
        context.stats.multi_character_frames += 1
        return
    why = identification_record(identifier, answer)
    for slug in keep:
        _add_image(session, context, row, frame, slug, why)


def _skip_for_character(
    session: Session,
    context: _Context,
    source: Source,
    frame: _FrameInfo,
    identifier: Identifier,
    answer: Identification,
) -> None:
    """A single-mode frame without its character: kept as a skipped image with the reason."""
    context.stats.skipped += 1
    assert source.character_id is not None  # single mode
    reason = f"not recognised by {identifier.name}: {answer.raw_answer}"[:_REASON_CHARS]
    why = identification_record(identifier, answer)
    _image_row(
        session, source, frame, source.character_id, why, status="skipped", status_reason=reason
    )


def _add_image(
    session: Session,
    context: _Context,
    source: Source,
    frame: _FrameInfo,
    slug: str,
    why: dict[str, Any],
) -> None:
    index = _dataset_index(session, context, slug)
    distance = context.options.near_duplicate_distance
    phash = hash_from_hex(frame.phash) if frame.phash else None
    if phash is not None and distance is not None and index.has_near(phash, distance):
        context.stats.near_duplicates += 1
        return
    created = _image_row(session, source, frame, context.by_slug[slug], why)
    if phash is not None:
        index.add(phash)
    if created:
        stats = context.stats
        stats.images_added += 1
        stats.per_character[slug] = stats.per_character.get(slug, 0) + 1
        stats.added_paths.append(frame.path)


def _image_row(
    session: Session,
    source: Source,
    frame: _FrameInfo,
    character_id: int,
    why: dict[str, Any],
    **status: str,
) -> bool:
    """The frame as an image of a character, with its provenance (and why it was assigned);
    False if it was there."""
    _, created = commands.add_image(
        session,
        character_id,
        frame.sha256,
        frame.path,
        frame.width,
        frame.height,
        _ORIGINS.get(source.kind, "frame"),
        provenance={
            **frame_provenance(source, frame.frame_index, frame.timestamp_s),
            "identification": why,
        },
        frame_id=frame.id,
        source_id=source.id,
        generation_params=frame.generation_params,
        phash=frame.phash,
        **status,
    )
    return created


def _dataset_index(session: Session, context: _Context, slug: str) -> HashIndex:
    if slug not in context.dataset_indexes:
        context.dataset_indexes[slug] = dataset_hash_index(
            session, context.root, context.by_slug[slug], context.log
        )
    return context.dataset_indexes[slug]


# --- crops of each person -----------------------------------------------------------------


def _classify_persons(
    context: _Context, source: _SourceInfo, identifier: Identifier, batch: Sequence[_FrameInfo]
) -> None:
    """Each person of each frame identified alone; a frame without persons is judged whole."""
    options = context.options
    assert options.persons is not None  # crop mode
    images = [load_image(context.root.path(frame.path)) for frame in batch]
    found = [find_persons(i, options.persons, options.crop_margin, options.heads) for i in images]
    crop_images = [images[i].crop(c.box) for i, crops in enumerate(found) for c in crops]
    whole = [images[i] for i, crops in enumerate(found) if not crops]
    asked = [*crop_images, *whole]
    answers = iter(identifier.identify(asked, context.candidates) if asked else [])
    crop_answers = [next(answers) for _ in crop_images]
    whole_answers = list(answers)
    context.stats.persons_detected += len(crop_images)
    with context.registry.session() as session:
        row = session.get(Source, source.id)
        assert row is not None  # the source's frames are being recorded
        crop_index = whole_index = 0
        for frame, image, crops in zip(batch, images, found, strict=True):
            if not crops:
                answer = whole_answers[whole_index]
                whole_index += 1
                _record(session, context, source, frame, identifier, answer)
                continue
            these = crop_answers[crop_index : crop_index + len(crops)]
            crop_index += len(crops)
            _record_persons(session, context, row, frame, image, identifier, crops, these)


def _record_persons(
    session: Session,
    context: _Context,
    source: Source,
    frame: _FrameInfo,
    image: Image.Image,
    identifier: Identifier,
    crops: Sequence[PersonCrop],
    answers: Sequence[Identification],
) -> None:
    seen: list[str] = []
    parts = []
    for number, (crop, answer) in enumerate(zip(crops, answers, strict=True), start=1):
        recognised = sorted(answer.slugs & context.by_slug.keys())
        parts.append(f"person {number} {list(crop.box)}: {', '.join(recognised) or 'no one'}")
        if len(recognised) == 1:
            seen.append(recognised[0])
            person = _Person(source, frame, image, crop)
            _add_crop(session, context, person, recognised[0], answer, identifier)
        elif recognised:
            context.stats.crops_ambiguous += 1
        else:
            person = _Person(source, frame, image, crop)
            _keep_unrecognised(session, context, person, identification_record(identifier, answer))
    summary = f"{len(crops)} person(s): " + "; ".join(parts)
    commands.record_frame_identification(
        session, frame.id, sorted(set(seen)), identifier.name, summary
    )
    context.stats.frames_classified += 1


@dataclass(frozen=True)
class _Person:
    """One detected person of a frame, with what its crops are cut from."""

    source: Source
    frame: _FrameInfo
    image: Image.Image
    crop: PersonCrop


def _add_crop(
    session: Session,
    context: _Context,
    person: _Person,
    slug: str,
    answer: Identification,
    identifier: Identifier,
) -> None:
    """The person's crop as a pending image of the character, then the three-stage crops of
    the shot types its dataset lacks (marked derived)."""
    why = identification_record(identifier, answer)
    crop = person.crop
    if _add_crop_image(session, context, person, slug, crop.box, why, None):
        context.stats.crops_added += 1
        context.stats.crops_not_solo += crop.not_solo
    width, height = person.image.size
    for stage, box in stage_boxes(crop, context.options.crop_margin, width, height).items():
        if stage == "far" or not _lacks(session, context, slug, _shot_of(box, crop)):
            continue
        if _add_crop_image(session, context, person, slug, box, why, stage):
            context.stats.crops_derived += 1


def _add_crop_image(
    session: Session,
    context: _Context,
    person: _Person,
    slug: str,
    box: tuple[int, int, int, int],
    why: dict[str, Any],
    stage: str | None,
) -> bool:
    source, frame, crop = person.source, person.frame, person.crop
    picture = person.image.crop(box)
    phash = perceptual_hash(picture)
    index = _dataset_index(session, context, slug)
    distance = context.options.near_duplicate_distance
    if distance is not None and index.has_near(phash, distance):
        context.stats.near_duplicates += 1
        return False
    stored = context.root.put_image(picture)
    shot = _shot_of(box, crop)
    provenance = {
        **frame_provenance(source, frame.frame_index, frame.timestamp_s),
        "crop": {**crop.record(), "box": list(box)},
        "shot": shot,
        "identification": why,
    }
    if stage is not None:
        provenance["derived"] = {"from_box": list(crop.box), "stage": stage}
    _, created = commands.add_image(
        session,
        context.by_slug[slug],
        stored.sha256,
        stored.relpath,
        stored.width,
        stored.height,
        _ORIGINS.get(source.kind, "frame"),
        provenance=provenance,
        frame_id=frame.id,
        source_id=source.id,
        phash=hash_to_hex(phash),
        status_reason="not solo: another person reaches into the crop" if crop.not_solo else None,
    )
    index.add(phash)
    if created:
        stats = context.stats
        stats.images_added += 1
        stats.per_character[slug] = stats.per_character.get(slug, 0) + 1
        stats.added_paths.append(stored.relpath)
        if shot is not None:
            counts = _shot_counts(session, context, slug)
            counts[shot] = counts.get(shot, 0) + 1
    return created


def _keep_unrecognised(
    session: Session, context: _Context, person: _Person, why: dict[str, Any]
) -> None:
    """A person no candidate was recognised in, kept for clustering into new characters."""
    crop = person.crop
    stored = context.root.put_image(person.image.crop(crop.box))
    provenance = {
        **frame_provenance(person.source, person.frame.frame_index, person.frame.timestamp_s),
        "crop": crop.record(),
        "identification": why,
    }
    cluster_commands.add_unrecognised_crop(
        session, person.frame.id, stored.sha256, stored.relpath, stored.width, stored.height,
        provenance,
    )  # fmt: skip
    context.stats.unrecognised.append(UnrecognisedPerson(person.frame.id, crop.box))


def identification_record(identifier: Identifier, answer: Identification) -> dict[str, Any]:
    """Why an image was assigned (or not), as its provenance keeps it: the identifier, its
    answer and, when the backend gives them, the method, scores and threshold (the review
    app's "why this crop was assigned")."""
    record: dict[str, Any] = {
        "identifier": identifier.name,
        "answer": answer.raw_answer[:_REASON_CHARS],
    }
    for key, value in (answer.record or {}).items():
        record[key] = value[:_REASON_CHARS] if isinstance(value, str) else value
    return record


def _shot_of(box: tuple[int, int, int, int], crop: PersonCrop) -> str | None:
    share = head_share(box, crop.head)
    return shot_type_for_ratio(share) if share is not None else None


def _lacks(session: Session, context: _Context, slug: str, shot: str | None) -> bool:
    """Whether the character has fewer pending and approved images of this shot type than the
    prep guide recommends (MIN_PER_SHOT)."""
    if shot is None:
        return False
    return _shot_counts(session, context, slug).get(shot, 0) < MIN_PER_SHOT


def _shot_counts(session: Session, context: _Context, slug: str) -> dict[str, int]:
    if slug not in context.shot_counts:
        provenances = session.scalars(
            select(ImageRow.provenance).where(
                ImageRow.character_id == context.by_slug[slug],
                ImageRow.status.in_(("pending", "approved")),
            )
        )
        counts: dict[str, int] = {}
        for provenance in provenances:
            shot = (provenance or {}).get("shot")
            if isinstance(shot, str):
                counts[shot] = counts.get(shot, 0) + 1
        context.shot_counts[slug] = counts
    return context.shot_counts[slug]
