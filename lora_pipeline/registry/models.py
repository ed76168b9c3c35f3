"""The registry schema: the single source of truth for characters, images and releases.

Paths stored here are relative to the data root (DESIGN §7). Status columns hold short
strings, listed in the `*_STATUSES` tuples, so that the same schema runs on SQLite and
PostgreSQL without native enum types.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy import DateTime as _DateTime
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

IMAGE_STATUSES = ("pending", "approved", "rejected", "skipped")
IMAGE_ORIGINS = ("frame", "generated", "upload", "comfyui")
SOURCE_KINDS = ("url", "video_upload", "image_upload", "comfyui_output")
SOURCE_STATES = ("pending", "running", "done", "failed")
INGEST_MODES = ("single", "project")
# duplicate: the output was a byte-for-byte copy of an existing image (duplicate_of_image_id).
JOB_STATUSES = ("pending", "running", "completed", "failed", "duplicate")
RELEASE_STATUSES = ("candidate", "approved", "active", "rejected")
REGENERATION_STATES = ("none", "queued", "requested", "done", "failed")
MODEL_KINDS = ("checkpoint", "lora", "vlm", "tagger", "face_detector", "embedding")
RELEASE_SCOPES = ("project", "baseline")
# "unverified": nothing failed, but nothing measured whether the LoRA draws the character.
EVAL_VERDICTS = ("pending", "pass", "fail", "unverified")
# A candidate character found among unrecognised crops: open until labelled or dismissed.
CLUSTER_STATUSES = ("open", "labelled", "dismissed")

# Explicit constraint names: Alembic can only alter or drop a constraint it can name, and
# SQLite batch migrations need the names to be the same on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def DateTime() -> _DateTime:  # noqa: N802 - reads like a column type
    # Naive UTC everywhere: SQLite has no time zones, and mixing aware and naive breaks compares.
    return _DateTime(timezone=False)


# Python None is stored as SQL NULL, not as the JSON literal 'null', so `IS NULL` finds it.
NullableJSON = JSON(none_as_null=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    style_prompt: Mapped[str] = mapped_column(Text, default="")
    # Evaluation prompts, gate thresholds and licence fields (see registry.commands
    # PROJECT_SETTINGS); absent keys take the defaults.
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)

    characters: Mapped[list[Character]] = relationship(back_populates="project")


class Character(Base):
    __tablename__ = "characters"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    # The slug is the Dagster partition key of the character.
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # Unique: a trigger word shared by two LoRAs would make prompts ambiguous.
    trigger_word: Mapped[str] = mapped_column(String(64), unique=True)
    design_prompt: Mapped[str] = mapped_column(Text, default="")
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    # Generation settings, the character's "SSOT settings" of the user guide.
    # 64-bit: ComfyUI and diffusers seeds go past the 32-bit INTEGER of PostgreSQL.
    seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Only a locked seed is reused for every image; otherwise each image draws a fresh one.
    seed_locked: Mapped[bool] = mapped_column(default=False, server_default=false())
    cfg: Mapped[float] = mapped_column(Float, default=7.0)
    steps: Mapped[int] = mapped_column(Integer, default=25)
    sampler: Mapped[str] = mapped_column(String(64), default="euler")
    scheduler: Mapped[str] = mapped_column(String(64), default="normal")
    width: Mapped[int] = mapped_column(Integer, default=512)
    height: Mapped[int] = mapped_column(Integer, default=512)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow, onupdate=utcnow)

    project: Mapped[Project] = relationship(back_populates="characters")


class Model(Base):
    """A model file the studio uses: a checkpoint, a LoRA, a VLM, a tagger, a face detector."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    base_model_version: Mapped[str] = mapped_column(String(64), default="sd15")
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class GenerationProfile(Base):
    """Links a project to its checkpoint, workflow template and LoRA (seed 001)."""

    __tablename__ = "generation_profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(200))
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    lora_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    lora_strength: Mapped[float] = mapped_column(Float, default=0.8)
    # ComfyUI API-format workflows for images and for videos; None = the built-in one.
    workflow_template: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON, nullable=True)
    video_workflow_template: Mapped[dict[str, Any] | None] = mapped_column(
        NullableJSON, nullable=True
    )
    is_default: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("project_id", "name"),)


class Source(Base):
    """An ingest request and its state: a URL, an upload, or the ComfyUI output folder."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    # Set in single-character mode; NULL in project mode (frames are sorted by identification).
    character_id: Mapped[int | None] = mapped_column(ForeignKey("characters.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    uri: Mapped[str] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(String(16), default="single")
    fps: Mapped[float] = mapped_column(Float, default=1.0)
    max_frames: Mapped[int] = mapped_column(Integer, default=100)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    video_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    local_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    stats: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    # The Dagster run that took the source and when: a `running` source whose run is no
    # longer alive died with it, and the stuck-job schedule marks it failed.
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)

    # The ingest sensors read the pending sources after their cursor.
    __table_args__ = (Index(None, "state", "id"),)


class Frame(Base):
    """A frame taken from a source, before it is sorted into characters.

    Classification is stored here so that a frame is classified once per source, whatever
    the number of characters it is sorted into.
    """

    __tablename__ = "frames"

    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    frame_index: Mapped[int] = mapped_column(Integer)
    timestamp_s: Mapped[float] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    # Character slugs recognised in the frame; NULL until classified.
    identified: Mapped[list[Any] | None] = mapped_column(NullableJSON, nullable=True)
    identifier: Mapped[str | None] = mapped_column(String(64), nullable=True)
    raw_answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    classified_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    # 64-bit perceptual hash as 16 hex digits (media.phash); near-duplicates are within a few bits.
    phash: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # What made the picture, when the source says (a ComfyUI PNG's `prompt` graph).
    generation_params: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON, nullable=True)

    # A sampled frame is recorded once, even when a run after a kill samples it again.
    __table_args__ = (
        UniqueConstraint("source_id", "sha256"),
        UniqueConstraint("source_id", "frame_index"),
    )


class Image(Base):
    """An image of one character, waiting for or carrying a reviewer's decision."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    character_id: Mapped[int] = mapped_column(ForeignKey("characters.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    origin: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    frame_id: Mapped[int | None] = mapped_column(ForeignKey("frames.id"), nullable=True)
    source_id: Mapped[int | None] = mapped_column(ForeignKey("sources.id"), nullable=True)
    generation_job_id: Mapped[int | None] = mapped_column(
        ForeignKey("generation_jobs.id"), nullable=True
    )
    # Source, video id, timestamp, frame index; or the generator and its parameters.
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    generation_params: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON, nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    # Perceptual hash (see Frame.phash); NULL until computed, filled in lazily by ingest.
    phash: Mapped[str | None] = mapped_column(String(16), nullable=True)

    character: Mapped[Character] = relationship()

    __table_args__ = (
        UniqueConstraint("character_id", "sha256"),
        # The review queue and the per-character counts filter on these.
        Index(None, "status"),
        Index(None, "character_id", "status"),
        # The training sensor reads the decisions after its cursor, and each character's last.
        Index(None, "reviewed_at"),
        Index(None, "character_id", "reviewed_at"),
    )


class Feedback(Base):
    """A reviewer's rejection: categories, notes, an optional design prompt edit."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), unique=True)
    character_id: Mapped[int] = mapped_column(ForeignKey("characters.id"), index=True)
    categories: Mapped[list[Any]] = mapped_column(JSON, default=list)
    notes: Mapped[str] = mapped_column(Text, default="")
    prompt_edit: Mapped[str | None] = mapped_column(Text, nullable=True)
    negative_terms: Mapped[list[Any]] = mapped_column(JSON, default=list)
    reviewer: Mapped[str] = mapped_column(String(200), default="")
    regeneration_state: Mapped[str] = mapped_column(String(16), default="queued")
    regeneration_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The new pending image the regeneration produced.
    regeneration_image_id: Mapped[int | None] = mapped_column(
        ForeignKey("images.id"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class GenerationJob(Base):
    __tablename__ = "generation_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    character_id: Mapped[int] = mapped_column(ForeignKey("characters.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="image")
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    backend: Mapped[str] = mapped_column(String(32), default="diffusers")
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    seed: Mapped[int] = mapped_column(BigInteger)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    feedback_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    comfyui_prompt_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The existing image the job's output was a byte-for-byte copy of (the image a job made
    # points back at it through images.generation_job_id). No foreign key: images already
    # reference this table, and a cycle would complicate dropping the tables.
    duplicate_of_image_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)

    # The generation-request sensor reads the pending jobs after its cursor.
    __table_args__ = (Index(None, "status", "id"),)


class DatasetVersion(Base):
    """An immutable set of approved images, identified by the hash of its manifest."""

    __tablename__ = "dataset_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    character_id: Mapped[int] = mapped_column(ForeignKey("characters.id"))
    version_hash: Mapped[str] = mapped_column(String(64))
    image_count: Mapped[int] = mapped_column(Integer)
    manifest_path: Mapped[str] = mapped_column(Text)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The Dagster run that built it.
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("character_id", "version_hash"),)


class LoraRelease(Base):
    __tablename__ = "lora_releases"

    id: Mapped[int] = mapped_column(primary_key=True)
    character_id: Mapped[int] = mapped_column(ForeignKey("characters.id"), index=True)
    # Indexed: the training sensor asks which dataset versions a release was trained on.
    dataset_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_versions.id"), nullable=True, index=True
    )
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    base_checkpoint: Mapped[str] = mapped_column(Text, default="")
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    scope: Mapped[str] = mapped_column(String(16), default="project")
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The release a retrain continued from (its weights were the starting point).
    parent_release_id: Mapped[int | None] = mapped_column(
        ForeignKey("lora_releases.id"), nullable=True
    )
    # The Dagster run that trained it.
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    # Approved although its latest eval was unverified: who decided it, why, when, and on
    # which eval (a newer eval needs a new decision).
    gate_override_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    gate_override_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    gate_override_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    gate_override_eval_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The licence it was approved under (given at approval, else the project's or the
    # dataset's); a project with `require_licence` refuses approval without one.
    licence: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        # At most one active project release per character and checkpoint, and one active
        # baseline (shared) release per checkpoint, enforced by the database itself so that
        # two concurrent activations cannot both win.
        Index(
            "uq_lora_releases_one_active",
            "character_id",
            "base_checkpoint",
            unique=True,
            postgresql_where=text("status = 'active' AND scope = 'project'"),
            sqlite_where=text("status = 'active' AND scope = 'project'"),
        ),
        Index(
            "uq_lora_releases_one_active_baseline",
            "base_checkpoint",
            unique=True,
            postgresql_where=text("status = 'active' AND scope = 'baseline'"),
            sqlite_where=text("status = 'active' AND scope = 'baseline'"),
        ),
    )


class Eval(Base):
    __tablename__ = "evals"

    id: Mapped[int] = mapped_column(primary_key=True)
    lora_release_id: Mapped[int] = mapped_column(ForeignKey("lora_releases.id"), index=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    grid_path: Mapped[str] = mapped_column(Text)
    image_paths: Mapped[list[Any]] = mapped_column(JSON, default=list)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    verdict: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class PromptSuggestion(Base):
    __tablename__ = "prompt_suggestions"

    id: Mapped[int] = mapped_column(primary_key=True)
    character_id: Mapped[int] = mapped_column(ForeignKey("characters.id"))
    suggested_prompt: Mapped[str] = mapped_column(Text)
    rationale: Mapped[str] = mapped_column(Text, default="")
    advisor: Mapped[str] = mapped_column(String(32), default="builtin")
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class ComfyuiOutputFile(Base):
    """A file seen in the ComfyUI output folder: each is ingested once, even across restarts.

    A file is known by its path, size and modification time: ComfyUI reuses a name once its
    files were deleted, and such a new file must be seen as new.
    """

    __tablename__ = "comfyui_output_files"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Relative to the configured output folder, in POSIX form.
    relpath: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    # The ingest request made for the file; NULL when no character or project matched it.
    source_id: Mapped[int | None] = mapped_column(ForeignKey("sources.id"), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("relpath", "size", "mtime_ns"),)


class CandidateCluster(Base):
    """A candidate character: unrecognised crops of a project that look alike (HDBSCAN over
    their embeddings). Labelling it as a character makes its crops pending images of that
    character; a labelled or dismissed cluster keeps its crops when the project is clustered
    again, and new crops close to it join it."""

    __tablename__ = "candidate_clusters"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="open")
    character_id: Mapped[int | None] = mapped_column(ForeignKey("characters.id"), nullable=True)
    size: Mapped[int] = mapped_column(Integer, default=0)
    # The contact sheet of its crops, relative to the data root.
    contact_sheet: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Mean unit embedding of its crops, in the embedder's space.
    centroid: Mapped[list[Any] | None] = mapped_column(NullableJSON, nullable=True)
    embedder: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class UnrecognisedCrop(Base):
    """A person cropped from a project-mode frame whom no character was recognised in."""

    __tablename__ = "unrecognised_crops"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    # Where in the frame, and the frame's source (as an image's provenance says it).
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    embedding: Mapped[list[Any] | None] = mapped_column(NullableJSON, nullable=True)
    embedder: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cluster_id: Mapped[int | None] = mapped_column(
        ForeignKey("candidate_clusters.id"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)

    # The same picture seen again (a rerun, another source) is one crop.
    __table_args__ = (UniqueConstraint("project_id", "sha256"),)
