"""What each page shows, read from the registry in one read-only session per page.

Plain dataclasses, so the templates never touch a database session.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lora_pipeline.dataset.quality import MIN_APPROVED_IMAGES
from lora_pipeline.evaluation import releases as release_actions
from lora_pipeline.evaluation.grid import strength_label
from lora_pipeline.evaluation.model_card import gate_override_line
from lora_pipeline.evaluation.scores import GATED_SCORES, not_measured
from lora_pipeline.generation.service import VIDEO_SUFFIXES, request_settings
from lora_pipeline.media.store import DataRoot, UnsafePathError
from lora_pipeline.registry import commands, queries, suggestions
from lora_pipeline.registry.models import (
    Character,
    Eval,
    Feedback,
    GenerationJob,
    GenerationProfile,
    Image,
    LoraRelease,
    Model,
    Project,
    PromptSuggestion,
    Source,
)
from lora_pipeline.review.why_assigned import why_assigned

GALLERY_ORIGINS = ("generated", "comfyui")
# The files a job may have made (generation.service writes them under videos/), by type.
JOB_OUTPUT_DIR = "videos"
JOB_OUTPUT_TYPES = {
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
GRID_TYPES = (".png", ".jpg", ".jpeg", ".webp")
QUEUE_LIMIT = 200
GALLERY_LIMIT = 60
JOB_LIMIT = 50
SOURCE_LIMIT = 20


@dataclass(frozen=True)
class SuggestionView:
    id: int
    prompt: str
    rationale: str
    advisor: str
    created_at: datetime

    @classmethod
    def of(cls, row: PromptSuggestion) -> SuggestionView:
        return cls(row.id, row.suggested_prompt, row.rationale, row.advisor, row.created_at)


@dataclass(frozen=True)
class ReleaseView:
    id: int
    status: str
    path: str
    created_at: datetime


@dataclass(frozen=True)
class CharacterView:
    slug: str
    name: str
    project_slug: str
    project_name: str
    design_prompt: str
    negative_prompt: str
    checkpoint: str
    settings: dict[str, Any]
    counts: dict[str, int]
    release: ReleaseView | None = None
    suggestion: SuggestionView | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def approved(self) -> int:
        return self.counts.get("approved", 0)

    @property
    def needed(self) -> int:
        return MIN_APPROVED_IMAGES

    @property
    def ready(self) -> bool:
        return self.approved >= MIN_APPROVED_IMAGES


def _checkpoints(session: Session, base_model: str | None) -> dict[int, str]:
    """The checkpoint each project generates with: its default profile's, else the base
    model configured for the whole studio."""
    rows = session.execute(
        select(GenerationProfile.project_id, Model.name)
        .join(Model, Model.id == GenerationProfile.checkpoint_id)
        .where(GenerationProfile.is_default.is_(True))
        .order_by(GenerationProfile.id)
    ).tuples()
    by_project = {project_id: name for project_id, name in rows}
    fallback = Path(base_model).name if base_model else "not configured"
    projects = session.scalars(select(Project.id))
    return {pid: by_project.get(pid, fallback) for pid in projects}


def _latest_releases(session: Session) -> dict[int, ReleaseView]:
    latest: dict[int, ReleaseView] = {}
    for row in session.scalars(select(LoraRelease).order_by(LoraRelease.id)):
        latest[row.character_id] = ReleaseView(row.id, row.status, row.path, row.created_at)
    return latest


def characters(session: Session, base_model: str | None) -> list[CharacterView]:
    checkpoints = _checkpoints(session, base_model)
    counts = queries.image_counts_by_character(session)
    releases = _latest_releases(session)
    open_suggestions = suggestions.open_suggestions(session)
    views = []
    for c in session.scalars(select(Character).order_by(Character.slug)):
        suggestion = open_suggestions.get(c.id)
        views.append(
            CharacterView(
                slug=c.slug,
                name=c.name,
                project_slug=c.project.slug,
                project_name=c.project.name,
                design_prompt=c.design_prompt,
                negative_prompt=c.negative_prompt,
                checkpoint=checkpoints.get(c.project_id, "not configured"),
                settings={"seed": c.seed, **request_settings(c)},
                counts=dict(counts[c.id]),
                release=releases.get(c.id),
                suggestion=SuggestionView.of(suggestion) if suggestion else None,
            )
        )
    return views


@dataclass(frozen=True)
class QueueItem:
    image_id: int
    character_slug: str
    character_name: str
    project_slug: str
    design_prompt: str
    origin: str
    width: int
    height: int
    created_at: datetime
    metadata: dict[str, Any] = field(default_factory=dict)
    # Its tags and asset type (seed 003), as dataset selection reads them.
    tags: list[str] = field(default_factory=list)


def _metadata(image: Image, checkpoint: str) -> dict[str, Any]:
    """Seed, checkpoint and sampler of a generated image; where a frame came from otherwise."""
    params = image.generation_params or {}
    if params:
        shown = {
            "seed": params.get("seed"),
            "checkpoint": params.get("checkpoint") or checkpoint,
            "sampler": " / ".join(
                str(params[k]) for k in ("sampler", "scheduler") if params.get(k)
            ),
            "steps": params.get("steps"),
            "cfg": params.get("cfg"),
            "negative prompt": params.get("negative_prompt"),
        }
    else:
        provenance = image.provenance or {}
        shown = {k: provenance.get(k) for k in ("source_id", "video_id", "timestamp_s")}
    answers = (image.provenance or {}).get("answers_feedback")
    if answers:
        shown["answers rejection"] = ", ".join(map(str, answers))
    return {k: v for k, v in shown.items() if v not in (None, "")}


def approve_queue(
    session: Session,
    base_model: str | None,
    project: str | None = None,
    character: str | None = None,
    limit: int = QUEUE_LIMIT,
) -> list[QueueItem]:
    checkpoints = _checkpoints(session, base_model)
    images = queries.pending_images(
        session, project_slug=project, character_slug=character, limit=limit
    )
    return [
        QueueItem(
            image_id=image.id,
            character_slug=image.character.slug,
            character_name=image.character.name,
            project_slug=image.character.project.slug,
            design_prompt=image.character.design_prompt,
            origin=image.origin,
            width=image.width,
            height=image.height,
            created_at=image.created_at,
            metadata=_metadata(image, checkpoints.get(image.character.project_id, "")),
            tags=commands.stored_tags(image),
        )
        for image in images
    ]


# The approved images shown beside an image being judged: enough to compare, quick to load.
COMPARISON_LIMIT = 12


def image_details(session: Session, base_model: str | None, image_id: int) -> dict[str, Any] | None:
    """What the single-image view shows: the image, its generation metadata and tags, the
    rejections it answers and the character's approved images to compare it with."""
    image = session.get(Image, image_id)
    if image is None:
        return None
    character = image.character
    checkpoint = _checkpoints(session, base_model).get(character.project_id, "")
    approved = session.scalars(
        select(Image.id)
        .where(Image.character_id == character.id, Image.status == "approved")
        .order_by(Image.id.desc())
        .limit(COMPARISON_LIMIT)
    ).all()
    return {
        "image_id": image.id,
        "status": image.status,
        "origin": image.origin,
        "width": image.width,
        "height": image.height,
        "url": f"/images/{image.id}",
        "character": character.slug,
        "character_name": character.name,
        "design_prompt": character.design_prompt,
        "metadata": _metadata(image, checkpoint),
        "tags": commands.stored_tags(image),
        "answers": _answered_rejections(session, image),
        "why": why_assigned(image.provenance),
        "approved": [{"image_id": i, "thumb": f"/images/{i}/thumb"} for i in approved],
        "approved_count": approved_count(session, character.id),
        "needed": MIN_APPROVED_IMAGES,
    }


def approved_count(session: Session, character_id: int) -> int:
    query = select(func.count(Image.id)).where(
        Image.character_id == character_id, Image.status == "approved"
    )
    return session.scalar(query) or 0


def _answered_rejections(session: Session, image: Image) -> list[dict[str, Any]]:
    """The rejections a regenerated image answers (their ids are in its provenance)."""
    raw = (image.provenance or {}).get("answers_feedback")
    ids = [i for i in raw if isinstance(i, int)] if isinstance(raw, list) else []
    if not ids:
        return []
    rows = session.scalars(select(Feedback).where(Feedback.id.in_(ids)).order_by(Feedback.id))
    return [
        {
            "feedback_id": row.id,
            "image_id": row.image_id,
            "thumb": f"/images/{row.image_id}/thumb",
            "categories": list(row.categories or []),
            "notes": row.notes,
            "reviewer": row.reviewer,
            "prompt_edit": row.prompt_edit,
            "negative_terms": list(row.negative_terms or []),
        }
        for row in rows
    ]


def pending_total(session: Session) -> int:
    return session.scalar(select(func.count(Image.id)).where(Image.status == "pending")) or 0


@dataclass(frozen=True)
class GalleryItem:
    image_id: int
    file_name: str
    character_slug: str
    status: str
    created_at: datetime
    size_bytes: int | None
    width: int
    height: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)


def _file_size(root: DataRoot, relpath: str) -> int | None:
    try:
        return root.path(relpath).stat().st_size
    except (OSError, UnsafePathError):
        return None  # shown as "missing": the page must not fail for one lost file


def _gallery_item(image: Image, root: DataRoot) -> GalleryItem:
    return GalleryItem(
        image_id=image.id,
        file_name=Path(image.path).name,
        character_slug=image.character.slug,
        status=image.status,
        created_at=image.created_at,
        size_bytes=_file_size(root, image.path),
        width=image.width,
        height=image.height,
        metadata=_metadata(image, ""),
        tags=commands.stored_tags(image),
    )


def gallery(session: Session, root: DataRoot, limit: int = GALLERY_LIMIT) -> list[GalleryItem]:
    """Recent generated images, newest first."""
    rows = session.scalars(
        select(Image)
        .where(Image.origin.in_(GALLERY_ORIGINS))
        .order_by(Image.created_at.desc(), Image.id.desc())
        .limit(limit)
    )
    return [_gallery_item(image, root) for image in rows]


def gallery_item(session: Session, root: DataRoot, image_id: int) -> GalleryItem | None:
    image = session.get(Image, image_id)
    return None if image is None else _gallery_item(image, root)


def image_source(session: Session, root: DataRoot, image_id: int) -> tuple[Path, str] | None:
    """The file of a registry image inside the data root, and its sha256 (for thumbnails)."""
    path = image_path(session, root, image_id)
    if path is None:
        return None
    return path, session.get(Image, image_id).sha256


def image_path(session: Session, root: DataRoot, image_id: int) -> Path | None:
    """The file of a registry image, only if it lies inside the data root."""
    image = session.get(Image, image_id)
    if image is None:
        return None
    try:
        path = root.path(image.path)
    except UnsafePathError:
        return None
    return path if path.is_file() else None


@dataclass(frozen=True)
class JobView:
    id: int
    character_slug: str
    kind: str
    status: str
    backend: str
    seed: int
    prompt: str
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    # The file the job made (a video clip), served by /jobs/{id}/output.
    output_name: str | None = None
    output_kind: str | None = None

    @property
    def output_url(self) -> str | None:
        return f"/jobs/{self.id}/output" if self.output_name else None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "character": self.character_slug,
            "kind": self.kind,
            "status": self.status,
            "backend": self.backend,
            "seed": self.seed,
            "error": self.error or "",
            "created_at": f"{self.created_at:%Y-%m-%d %H:%M:%S}",
            "output": self.output_url or "",
            "output_name": self.output_name or "",
            "output_kind": self.output_kind or "",
        }


def _job_output_file(root: DataRoot, job: GenerationJob) -> tuple[Path, str] | None:
    """(file, content type) of the output a job recorded, only if it is a regular file of a
    known video or animation type under videos/ of the data root (no symlink out of it)."""
    output = (job.params or {}).get("output")
    if not isinstance(output, str):
        return None
    suffix = PurePosixPath(output).suffix.lower()
    media_type = JOB_OUTPUT_TYPES.get(suffix) if suffix in VIDEO_SUFFIXES else None
    if media_type is None:
        return None
    try:
        path, folder = root.path(output), root.path(JOB_OUTPUT_DIR)
    except UnsafePathError:
        return None
    if not path.is_relative_to(folder) or not path.is_file():
        return None
    return path, media_type


def _job_view(root: DataRoot, job: GenerationJob, slug: str) -> JobView:
    output = _job_output_file(root, job)
    return JobView(
        job.id,
        slug,
        job.kind,
        job.status,
        job.backend,
        job.seed,
        job.prompt,
        job.error,
        job.created_at,
        job.finished_at,
        output_name=PurePosixPath(job.params["output"]).name if output else None,
        output_kind=output[1].split("/")[0] if output else None,
    )


def jobs(session: Session, root: DataRoot, limit: int = JOB_LIMIT) -> list[JobView]:
    slugs = dict(session.execute(select(Character.id, Character.slug)).tuples().all())
    return [
        _job_view(root, job, slugs.get(job.character_id, "?"))
        for job in queries.generation_jobs(session, limit=limit)
    ]


def job_output(session: Session, root: DataRoot, job_id: int) -> tuple[Path, str] | None:
    """(file, content type) of a job's recorded output, if this app serves it."""
    job = session.get(GenerationJob, job_id)
    return None if job is None else _job_output_file(root, job)


@dataclass(frozen=True)
class SourceView:
    id: int
    kind: str
    uri: str
    mode: str
    target: str
    state: str
    error: str | None
    created_at: datetime


def recent_sources(session: Session, limit: int = SOURCE_LIMIT) -> list[SourceView]:
    projects = dict(session.execute(select(Project.id, Project.slug)).tuples().all())
    characters_by_id = dict(session.execute(select(Character.id, Character.slug)).tuples().all())
    rows = session.scalars(select(Source).order_by(Source.id.desc()).limit(limit))
    return [
        SourceView(
            s.id,
            s.kind,
            s.uri,
            s.mode,
            characters_by_id.get(s.character_id, "") if s.character_id else projects[s.project_id],
            s.state,
            s.error,
            s.created_at,
        )
        for s in rows
    ]


def choices(session: Session) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """(project slug, name) and (character slug, name, project slug) for the forms."""
    projects = [(p.slug, p.name) for p in queries.list_projects(session)]
    cast = [(c.slug, c.name, c.project.slug) for c in queries.list_characters(session)]
    return projects, cast


@dataclass(frozen=True)
class ScoreRow:
    """One gated score as the gate saw it: its value, its threshold and what came of it."""

    name: str
    value: str
    threshold: str
    # "ok", "below", "not measured" (gated but no value) or "not gated".
    result: str


@dataclass(frozen=True)
class GridRow:
    prompt: str
    seed: int
    # The cell image URLs, one per strength column.
    cells: list[str]


@dataclass(frozen=True)
class GridTable:
    """The eval grid as an HTML table: labels in the page (readable at any size), each cell
    the rendered image itself."""

    columns: list[str]
    rows: list[GridRow]


@dataclass(frozen=True)
class EvalView:
    id: int
    verdict: str
    scores: dict[str, str]
    gate_reasons: list[str]
    has_grid: bool
    created_at: datetime
    score_rows: list[ScoreRow] = field(default_factory=list)
    not_measured: list[str] = field(default_factory=list)
    grid: GridTable | None = None
    # Epoch -> score -> formatted value, when training saved several epochs.
    per_epoch: dict[int, dict[str, str]] = field(default_factory=dict)
    best_epoch: int | None = None

    @property
    def grid_url(self) -> str | None:
        return f"/evals/{self.id}/grid" if self.has_grid else None


@dataclass(frozen=True)
class ReleaseRow:
    id: int
    status: str
    scope: str
    checkpoint: str
    created_at: datetime
    dataset: str
    parent_id: int | None
    path: str
    eval: EvalView | None
    actions: tuple[str, ...]
    # An unverified gate overridden for the latest eval: who, when, why (else "").
    gate_override: str = ""
    # The licence recorded at approval ("" before: the approval form asks for it).
    licence: str = ""

    @property
    def needs_override(self) -> bool:
        """Approving or activating it needs a reviewer's override with a reason."""
        unverified = self.eval is not None and self.eval.verdict == "unverified"
        return unverified and not self.gate_override

    def as_json(self) -> dict[str, Any]:
        evaluation = self.eval
        return {
            "id": self.id,
            "status": self.status,
            "scope": self.scope,
            "checkpoint": self.checkpoint,
            "created_at": f"{self.created_at:%Y-%m-%d %H:%M:%S}",
            "dataset": self.dataset,
            "parent_id": self.parent_id,
            "path": self.path,
            "licence": self.licence,
            "eval": None
            if evaluation is None
            else {
                "id": evaluation.id,
                "verdict": evaluation.verdict,
                "scores": evaluation.scores,
                "gate_reasons": evaluation.gate_reasons,
                "grid": evaluation.grid_url or "",
                "not_measured": evaluation.not_measured,
                "thresholds": {row.name: row.threshold for row in evaluation.score_rows},
            },
            "actions": list(self.actions),
            "needs_override": self.needs_override,
            "gate_override": self.gate_override,
        }


@dataclass(frozen=True)
class CharacterReleases:
    slug: str
    name: str
    project_slug: str
    releases: list[ReleaseRow]


def _eval_view(session: Session, root: DataRoot, release_id: int) -> EvalView | None:
    evaluation = queries.latest_eval(session, release_id)
    if evaluation is None:
        return None
    recorded = evaluation.scores or {}
    per_epoch = recorded.get("per_epoch") or {}
    return EvalView(
        id=evaluation.id,
        verdict=evaluation.verdict,
        scores=release_actions.eval_scores(evaluation),
        gate_reasons=release_actions.gate_reasons(evaluation),
        has_grid=_grid_file(root, evaluation) is not None,
        created_at=evaluation.created_at,
        score_rows=_score_rows(evaluation),
        not_measured=not_measured({name: recorded.get(name) for name in GATED_SCORES}),
        grid=_grid_table(evaluation),
        per_epoch={
            int(epoch): {name: _score_text(values.get(name)) for name in GATED_SCORES}
            for epoch, values in sorted(per_epoch.items(), key=lambda item: int(item[0]))
            if str(epoch).isdigit() and isinstance(values, dict)
        }
        if isinstance(per_epoch, dict) and len(per_epoch) > 1
        else {},
        best_epoch=best if isinstance(best := recorded.get("best_epoch"), int) else None,
    )


def _score_text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return "not measured"
    return f"{float(value):.4g}"


def _score_rows(evaluation: Eval) -> list[ScoreRow]:
    """Each gated score against the thresholds the eval was gated with (recorded in its
    settings; an eval recorded without them shows "not recorded")."""
    recorded = evaluation.scores or {}
    thresholds = (evaluation.settings or {}).get("thresholds")
    rows = []
    for name, threshold_name in GATED_SCORES.items():
        value = recorded.get(name)
        measured = _score_text(value) != "not measured"
        if not isinstance(thresholds, dict):
            threshold, result = "not recorded", "ok" if measured else "not measured"
        elif thresholds.get(threshold_name) is None:
            threshold, result = "not gated", "not gated" if measured else "not measured"
        else:
            limit = float(thresholds[threshold_name])
            threshold = f"≥ {limit:g}"
            result = "not measured" if not measured else ("ok" if value >= limit else "below")
        rows.append(ScoreRow(name, _score_text(value), threshold, result))
    return rows


def _grid_table(evaluation: Eval) -> GridTable | None:
    """Rows (prompt, seed) × columns (strength), in the order the grid rendered its cells;
    None when the recorded spec and cells do not match."""
    spec = (evaluation.settings or {}).get("spec") or {}
    prompts, seeds = spec.get("prompts") or [], spec.get("seeds") or []
    strengths = spec.get("strengths") or []
    cells = evaluation.image_paths or []
    if not (prompts and seeds and strengths) or len(cells) != len(prompts) * len(seeds) * len(
        strengths
    ):
        return None
    rows, index = [], 0
    for prompt in prompts:
        for seed in seeds:
            urls = [f"/evals/{evaluation.id}/cells/{index + n}" for n in range(len(strengths))]
            rows.append(GridRow(str(prompt), int(seed), urls))
            index += len(strengths)
    return GridTable([strength_label(float(s)) for s in strengths], rows)


def eval_cell(session: Session, root: DataRoot, eval_id: int, index: int) -> Path | None:
    """One cell image of an eval, only if it is an image file inside the data root."""
    evaluation = session.get(Eval, eval_id)
    cells = evaluation.image_paths if evaluation is not None else []
    if not 0 <= index < len(cells) or not isinstance(cells[index], str):
        return None
    return _image_file(root, cells[index])


def _release_row(session: Session, root: DataRoot, release: LoraRelease) -> ReleaseRow:
    evaluation = _eval_view(session, root, release.id)
    overridden = evaluation is not None and release.gate_override_eval_id == evaluation.id
    return ReleaseRow(
        id=release.id,
        status=release.status,
        scope=release.scope,
        checkpoint=release.base_checkpoint or "not recorded",
        created_at=release.created_at,
        dataset=release_actions.dataset_label(session, release.dataset_version_id),
        parent_id=release.parent_release_id,
        path=release.path,
        eval=evaluation,
        actions=release_actions.allowed_actions(release.status),
        gate_override=gate_override_line(release) if overridden else "",
        licence=release.licence or "",
    )


def releases(
    session: Session, root: DataRoot, character: str | None = None
) -> list[CharacterReleases]:
    """Every character's releases (or one character's), newest first, with the latest eval."""
    cast = (
        [commands.get_character(session, character)]
        if character
        else queries.list_characters(session)
    )
    return [
        CharacterReleases(
            c.slug,
            c.name,
            c.project.slug,
            [_release_row(session, root, r) for r in queries.releases_of(session, c.id)],
        )
        for c in cast
    ]


def _grid_file(root: DataRoot, evaluation: Eval) -> Path | None:
    return _image_file(root, evaluation.grid_path)


def _image_file(root: DataRoot, relpath: str) -> Path | None:
    if PurePosixPath(relpath).suffix.lower() not in GRID_TYPES:
        return None
    try:
        path = root.path(relpath)
    except UnsafePathError:
        return None
    return path if path.is_file() else None


def eval_grid(session: Session, root: DataRoot, eval_id: int) -> Path | None:
    """The grid image of an eval, only if it is an image file inside the data root."""
    evaluation = session.get(Eval, eval_id)
    return None if evaluation is None else _grid_file(root, evaluation)
