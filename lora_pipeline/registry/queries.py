"""Read-only questions the sensors, assets, CLI and review app ask the registry."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from lora_pipeline.registry.commands import checkpoint_key, get_character, get_project
from lora_pipeline.registry.errors import InvalidInputError
from lora_pipeline.registry.models import (
    IMAGE_STATUSES,
    JOB_STATUSES,
    SOURCE_STATES,
    Character,
    ComfyuiOutputFile,
    DatasetVersion,
    Eval,
    Feedback,
    Frame,
    GenerationJob,
    GenerationProfile,
    Image,
    LoraRelease,
    Model,
    Project,
    Source,
)


def _limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"limit must be a positive whole number, got {limit!r}")
    return limit


def list_projects(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.slug)))


def list_characters(session: Session, project_slug: str | None = None) -> list[Character]:
    query = select(Character).order_by(Character.slug)
    if project_slug is not None:
        query = query.where(Character.project_id == get_project(session, project_slug).id)
    return list(session.scalars(query))


def character_slugs(session: Session) -> list[str]:
    return list(session.scalars(select(Character.slug).order_by(Character.slug)))


def characters_by_slug(session: Session) -> list[tuple[int, str]]:
    """(id, slug) of every character, in the order `list_characters` gives (the database's)."""
    query = select(Character.id, Character.slug).order_by(Character.slug)
    return [(row.id, row.slug) for row in session.execute(query)]


def characters_after(session: Session, last_id: int, limit: int) -> list[tuple[int, str]]:
    """(id, slug) of up to `limit` characters newer than a sensor's cursor, oldest first."""
    query = (
        select(Character.id, Character.slug)
        .where(Character.id > last_id)
        .order_by(Character.id)
        .limit(_limit(limit))
    )
    return [(row.id, row.slug) for row in session.execute(query)]


def image_counts(session: Session, character_id: int) -> dict[str, int]:
    """Number of images of the character per status; every status is present."""
    counts = dict.fromkeys(IMAGE_STATUSES, 0)
    rows = session.execute(
        select(Image.status, func.count(Image.id))
        .where(Image.character_id == character_id)
        .group_by(Image.status)
    ).tuples()
    for status, count in rows:
        counts[status] = count
    return counts


def image_counts_by_character(session: Session) -> dict[int, dict[str, int]]:
    """character id -> number of its images per status (every status present), one query."""
    counts: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(IMAGE_STATUSES, 0))
    rows = session.execute(
        select(Image.character_id, Image.status, func.count(Image.id)).group_by(
            Image.character_id, Image.status
        )
    ).tuples()
    for character_id, status, count in rows:
        counts[character_id][status] = count
    return counts


def approved_images(session: Session, character_id: int) -> list[Image]:
    query = (
        select(Image)
        .where(Image.character_id == character_id, Image.status == "approved")
        .order_by(Image.id)
    )
    return list(session.scalars(query))


def approved_pairs(session: Session, character_id: int) -> list[tuple[int, str]]:
    """(id, sha256) of the character's approved images, by id: what its dataset version hash
    is made of, without loading the rows."""
    query = (
        select(Image.id, Image.sha256)
        .where(Image.character_id == character_id, Image.status == "approved")
        .order_by(Image.id)
    )
    return [(row.id, row.sha256) for row in session.execute(query)]


def pending_images(
    session: Session,
    project_slug: str | None = None,
    character_slug: str | None = None,
    limit: int | None = None,
) -> list[Image]:
    """The review queue, oldest first, optionally for one project or one character."""
    query = select(Image).where(Image.status == "pending").order_by(Image.id)
    if character_slug is not None:
        character = get_character(session, character_slug)
        if project_slug is not None and character.project.slug != project_slug:
            get_project(session, project_slug)  # an unknown project is reported as such
            raise InvalidInputError(
                f"character {character_slug!r} is not in project {project_slug!r}"
            )
        query = query.where(Image.character_id == character.id)
    elif project_slug is not None:
        project = get_project(session, project_slug)
        query = query.join(Character, Character.id == Image.character_id).where(
            Character.project_id == project.id
        )
    return list(session.scalars(query.limit(_limit(limit))))


def feedback_after(session: Session, last_id: int, limit: int | None = None) -> list[Feedback]:
    """Rejections newer than a sensor's cursor, oldest first."""
    query = select(Feedback).where(Feedback.id > last_id).order_by(Feedback.id)
    return list(session.scalars(query.limit(_limit(limit))))


def rejections_after(session: Session, last_id: int, limit: int) -> list[tuple[int, str]]:
    """(feedback id, character slug) of up to `limit` rejections newer than a sensor's cursor,
    oldest first: one query on the primary key, whatever the number of characters."""
    query = (
        select(Feedback.id, Character.slug)
        .join(Character, Character.id == Feedback.character_id)
        .where(Feedback.id > last_id)
        .order_by(Feedback.id)
        .limit(_limit(limit))
    )
    return [(row.id, row.slug) for row in session.execute(query)]


def sources_after(
    session: Session, last_id: int, states: Sequence[str] = ("pending",)
) -> list[Source]:
    """Sources newer than a sensor's cursor in one of `states`, oldest first."""
    if isinstance(states, str):
        states = (states,)
    unknown = [s for s in states if s not in SOURCE_STATES]
    if unknown:
        raise InvalidInputError(
            f"unknown source state {', '.join(map(repr, unknown))}: valid are "
            f"{', '.join(SOURCE_STATES)}"
        )
    query = select(Source).where(Source.id > last_id, Source.state.in_(states)).order_by(Source.id)
    return list(session.scalars(query))


COMFYUI_KIND = "comfyui_output"


def ingest_requests_after(
    session: Session, last_id: int, comfyui: bool, limit: int | None = None
) -> list[Source]:
    """Up to `limit` pending sources newer than a sensor's cursor, oldest first: those of the
    ComfyUI output folder (`comfyui`) or those of every other kind (the (state, id) index)."""
    kind = Source.kind == COMFYUI_KIND if comfyui else Source.kind != COMFYUI_KIND
    query = (
        select(Source)
        .where(Source.state == "pending", Source.id > last_id, kind)
        .order_by(Source.id)
        .limit(_limit(limit))
    )
    return list(session.scalars(query))


def frames_of_source(session: Session, source_id: int) -> list[Frame]:
    query = select(Frame).where(Frame.source_id == source_id).order_by(Frame.frame_index, Frame.id)
    return list(session.scalars(query))


def source_uses(session: Session, uri: str) -> bool:
    """Whether any source was requested for this URL or stored upload."""
    return session.scalar(select(Source.id).where(Source.uri == uri).limit(1)) is not None


def retried_sources(
    session: Session, up_to_id: int | None = None, limit: int | None = None
) -> list[Source]:
    """Sources a retry put back to pending (they keep the time their failed run ended), up to
    id `up_to_id` when given, oldest first."""
    query = select(Source).where(Source.state == "pending", Source.processed_at.is_not(None))
    if up_to_id is not None:
        query = query.where(Source.id <= up_to_id)
    return list(session.scalars(query.order_by(Source.id).limit(_limit(limit))))


def ingest_partition(session: Session, source: Source) -> str | None:
    """The character partition whose run ingests a source. Single mode: the source's character.
    Project mode: the project's first character by slug, whose run ingests and classifies the
    frames once, sorting them into every character. None: the project has no character yet."""
    if source.character_id is not None:
        return session.scalar(select(Character.slug).where(Character.id == source.character_id))
    return session.scalar(
        select(Character.slug)
        .where(Character.project_id == source.project_id)
        .order_by(Character.slug)
        .limit(1)
    )


def pending_source_ids(session: Session, character_slug: str) -> list[int]:
    """Sources still to ingest for a character: its own, and its project's project-mode ones."""
    character = get_character(session, character_slug)
    query = select(Source.id).where(
        Source.state == "pending",
        or_(
            Source.character_id == character.id,
            (Source.mode == "project") & (Source.project_id == character.project_id),
        ),
    )
    return list(session.scalars(query.order_by(Source.id)))


def frame_paths(session: Session, frame_ids: Sequence[int]) -> list[str]:
    """The files of these frames, in frame id order."""
    if not frame_ids:
        return []
    query = select(Frame.path).where(Frame.id.in_(list(frame_ids)))
    return list(session.scalars(query.order_by(Frame.id)))


def last_review_at(session: Session, character_id: int) -> datetime | None:
    """When a reviewer last decided on one of the character's images (UTC): the training
    sensor lets the approved set settle after it."""
    query = select(func.max(Image.reviewed_at)).where(Image.character_id == character_id)
    return session.scalar(query)


def last_decision_at(session: Session) -> datetime | None:
    """When a reviewer last decided on any image (UTC; the reviewed_at index answers it)."""
    return session.scalar(select(func.max(Image.reviewed_at)))


def decisions_since(session: Session, since: datetime | None) -> dict[int, datetime]:
    """Character id -> its newest decision at or after `since` (None: ever), for the
    characters with one: the training sensor recomputes only these. The rows are grouped
    here, not by the database: SQLite would answer a GROUP BY by scanning the whole
    (character_id, reviewed_at) index instead of searching the reviewed_at one."""
    query = select(Image.character_id, Image.reviewed_at).where(
        Image.reviewed_at.is_not(None) if since is None else Image.reviewed_at >= since
    )
    newest: dict[int, datetime] = {}
    for character_id, reviewed_at in session.execute(query).tuples():
        if character_id not in newest or reviewed_at > newest[character_id]:
            newest[character_id] = reviewed_at
    return newest


# Bound parameters per IN list, well under SQLite's and PostgreSQL's limits.
_IN_CHUNK = 500


def trained_versions(session: Session, versions: Mapping[int, str]) -> set[int]:
    """The character ids (of `versions`: character id -> dataset version hash) whose version a
    LoRA release was trained on; a few queries for any number of characters."""
    trained: set[int] = set()
    hashes = sorted(set(versions.values()))
    for start in range(0, len(hashes), _IN_CHUNK):
        query = (
            select(DatasetVersion.character_id, DatasetVersion.version_hash)
            .join(LoraRelease, LoraRelease.dataset_version_id == DatasetVersion.id)
            .where(DatasetVersion.version_hash.in_(hashes[start : start + _IN_CHUNK]))
        )
        trained |= {c for c, h in session.execute(query).tuples() if versions.get(c) == h}
    return trained


def latest_dataset_version(session: Session, character_id: int) -> DatasetVersion | None:
    query = (
        select(DatasetVersion)
        .where(DatasetVersion.character_id == character_id)
        .order_by(DatasetVersion.id.desc())
        .limit(1)
    )
    return session.scalar(query)


def latest_release(
    session: Session, character_id: int, scope: str | None = None
) -> LoraRelease | None:
    """The character's newest release (of `scope`, project or baseline, when given)."""
    query = select(LoraRelease).where(LoraRelease.character_id == character_id)
    if scope is not None:
        query = query.where(LoraRelease.scope == scope)
    return session.scalar(query.order_by(LoraRelease.id.desc()).limit(1))


def active_release(
    session: Session, character_id: int, checkpoint: str | None = None
) -> LoraRelease | None:
    """The character's own (project) active release; with `checkpoint`, the one trained on that
    checkpoint (any name or path of it, see `commands.checkpoint_key`) or on an unrecorded one."""
    query = select(LoraRelease).where(
        LoraRelease.character_id == character_id,
        LoraRelease.status == "active",
        LoraRelease.scope == "project",
    )
    if checkpoint is not None:
        query = query.where(LoraRelease.base_checkpoint.in_((checkpoint_key(checkpoint), "")))
    return session.scalars(query.order_by(LoraRelease.base_checkpoint.desc())).first()


def active_baseline_release(session: Session, checkpoint: str | None) -> LoraRelease | None:
    """The shared (baseline) release active for a checkpoint, applied under every project
    LoRA on it."""
    query = select(LoraRelease).where(
        LoraRelease.scope == "baseline",
        LoraRelease.status == "active",
        LoraRelease.base_checkpoint == checkpoint_key(checkpoint),
    )
    return session.scalar(query)


def releases_of(session: Session, character_id: int) -> list[LoraRelease]:
    query = (
        select(LoraRelease)
        .where(LoraRelease.character_id == character_id)
        .order_by(LoraRelease.id.desc())
    )
    return list(session.scalars(query))


def latest_eval(session: Session, release_id: int) -> Eval | None:
    query = select(Eval).where(Eval.lora_release_id == release_id).order_by(Eval.id.desc()).limit(1)
    return session.scalar(query)


def trained_dataset_hashes(session: Session, character_id: int) -> set[str]:
    """Hashes of the character's dataset versions that a LoRA release was trained on."""
    query = (
        select(DatasetVersion.version_hash)
        .join(LoraRelease, LoraRelease.dataset_version_id == DatasetVersion.id)
        .where(DatasetVersion.character_id == character_id)
    )
    return set(session.scalars(query))


def generation_jobs(
    session: Session,
    character_id: int | None = None,
    status: str | None = None,
    limit: int | None = 50,
) -> list[GenerationJob]:
    """Generation jobs, newest first."""
    query = select(GenerationJob).order_by(GenerationJob.id.desc())
    if character_id is not None:
        query = query.where(GenerationJob.character_id == character_id)
    if status is not None:
        if status not in JOB_STATUSES:
            raise InvalidInputError(
                f"unknown job status {status!r}: valid are {', '.join(JOB_STATUSES)}"
            )
        query = query.where(GenerationJob.status == status)
    return list(session.scalars(query.limit(_limit(limit))))


def pending_jobs_after(
    session: Session, after_id: int, limit: int | None = None
) -> list[GenerationJob]:
    """Up to `limit` pending generation jobs newer than a sensor's cursor, oldest first (the
    (status, id) index)."""
    query = select(GenerationJob).where(
        GenerationJob.id > after_id, GenerationJob.status == "pending"
    )
    return list(session.scalars(query.order_by(GenerationJob.id).limit(_limit(limit))))


def comfyui_prompt_ids(session: Session, job_ids: Sequence[int]) -> dict[int, str]:
    """Job id -> the ComfyUI prompt it was queued as, for the jobs that were sent to ComfyUI."""
    rows = session.execute(
        select(GenerationJob.id, GenerationJob.comfyui_prompt_id).where(
            GenerationJob.id.in_(list(job_ids)), GenerationJob.comfyui_prompt_id.is_not(None)
        )
    ).tuples()
    return dict(rows.all())


def default_profile(session: Session, project_id: int) -> GenerationProfile | None:
    """The project's default generation profile (None: it has none). The lowest id wins should
    two ever be marked default, as `commands.set_project_checkpoint` picks it."""
    return session.scalar(
        select(GenerationProfile)
        .where(GenerationProfile.project_id == project_id, GenerationProfile.is_default.is_(True))
        .order_by(GenerationProfile.id)
        .limit(1)
    )


def generation_profiles(
    session: Session, project_slug: str | None = None
) -> list[tuple[GenerationProfile, Project, Model | None]]:
    """Every generation profile (of one project) with its project and checkpoint, by project
    slug and name."""
    query = (
        select(GenerationProfile, Project, Model)
        .join(Project, Project.id == GenerationProfile.project_id)
        .outerjoin(Model, Model.id == GenerationProfile.checkpoint_id)
        .order_by(Project.slug, GenerationProfile.name)
    )
    if project_slug is not None:
        query = query.where(Project.id == get_project(session, project_slug).id)
    return [(profile, project, model) for profile, project, model in session.execute(query)]


def image_hashes(session: Session, character_id: int) -> list[tuple[int, str | None, str]]:
    """(id, perceptual hash or None, path) of every image of the character, whatever its
    status: a near-duplicate of a rejected image would be rejected again."""
    query = (
        select(Image.id, Image.phash, Image.path)
        .where(Image.character_id == character_id)
        .order_by(Image.id)
    )
    return [(row.id, row.phash, row.path) for row in session.execute(query)]


def unassigned_comfyui_outputs(session: Session, limit: int = 200) -> list[ComfyuiOutputFile]:
    """Output files remembered without an ingest request (no character or project matched
    their name), newest first."""
    query = (
        select(ComfyuiOutputFile)
        .where(ComfyuiOutputFile.source_id.is_(None))
        .order_by(ComfyuiOutputFile.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


def seen_comfyui_outputs(session: Session) -> set[tuple[str, int, int]]:
    """(relpath, size, mtime_ns) of every ComfyUI output file already recorded."""
    query = select(ComfyuiOutputFile.relpath, ComfyuiOutputFile.size, ComfyuiOutputFile.mtime_ns)
    return {(row.relpath, row.size, row.mtime_ns) for row in session.execute(query)}
