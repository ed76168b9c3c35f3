"""Commands on generation profiles (seed 001): a project's checkpoint, its ComfyUI workflow
templates for images and videos, and the strength of its LoRAs.

A project's *default* profile is the one its characters generate, evaluate and train with; a
project has at most one (the first profile added becomes it). A profile's checkpoint is a
`models` row of kind checkpoint, named by its file name: that is how ComfyUI lists it, and how
releases are matched to the checkpoint they were trained on (`checkpoint_key`).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lora_pipeline.registry.commands._rows import _existing_after_race, _try_insert
from lora_pipeline.registry.commands._validate import _json, _setting, _text, validate_slug
from lora_pipeline.registry.commands.projects import get_project
from lora_pipeline.registry.errors import ConflictError, InvalidInputError, NotFoundError
from lora_pipeline.registry.models import GenerationProfile, Model, Project

# What `add_profile` and `update_profile` take (None in an update: back to the studio's base
# model, or to the shipped template).
PROFILE_FIELDS = ("checkpoint", "workflow_template", "video_workflow_template", "lora_strength")
DEFAULT_PROFILE_NAME = "default"
_TEMPLATE_LABELS = {
    "workflow_template": "the image workflow template",
    "video_workflow_template": "the video workflow template",
}


def get_profile(session: Session, project_slug: str, name: str) -> GenerationProfile:
    project = get_project(session, project_slug)
    profile = _profile_named(session, project, name)
    if profile is None:
        raise NotFoundError(f"project {project_slug!r} has no generation profile {name!r}")
    return profile


def _profile_named(session: Session, project: Project, name: str) -> GenerationProfile | None:
    return session.scalar(
        select(GenerationProfile).where(
            GenerationProfile.project_id == project.id, GenerationProfile.name == name
        )
    )


def _default_of(session: Session, project: Project) -> GenerationProfile | None:
    # The lowest id wins, as in the queries that read it, should two ever be marked default.
    return session.scalar(
        select(GenerationProfile)
        .where(GenerationProfile.project_id == project.id, GenerationProfile.is_default.is_(True))
        .order_by(GenerationProfile.id)
        .limit(1)
    )


def register_checkpoint(session: Session, checkpoint: str) -> Model:
    """The `models` row (kind checkpoint) of a diffusers folder, single-file checkpoint or hub
    id, added when new. A known name at a new path is taken as the file having moved: one name is
    one checkpoint to ComfyUI and to the releases trained on it."""
    path = _text(checkpoint, "checkpoint", required=True, max_length=1000)
    if any(ch in path for ch in "\x00\r\n"):
        raise InvalidInputError(f"invalid checkpoint {path[:80]!r}: no control characters")
    by_path = select(Model).where(Model.kind == "checkpoint", Model.path == path)
    existing = session.scalar(by_path)
    if existing is not None:
        return existing
    name = PurePosixPath(path.replace("\\", "/").rstrip("/")).name
    if not name or name in (".", ".."):
        raise InvalidInputError(f"checkpoint {path!r} names no file, folder or hub id")
    named = session.scalar(select(Model).where(Model.name == name))
    if named is not None:
        if named.kind != "checkpoint":
            raise ConflictError(
                f"the name {name!r} is already a {named.kind} model ({named.path}): a checkpoint "
                "must have a file name of its own"
            )
        named.path = path
        session.flush()
        return named
    model = Model(name=name, kind="checkpoint", path=path)
    if not _try_insert(session, model):
        return _existing_after_race(session, by_path, f"checkpoint {name}")
    return model


def validate_workflow_template(value: object, field: str = "workflow_template") -> dict[str, Any]:
    """A ComfyUI workflow in API format ("Save (API format)"): `{node_id: {class_type,
    inputs}}`, whose links (`[node_id, output]`) name nodes of the graph."""
    what = _TEMPLATE_LABELS[field]
    if isinstance(value, dict) and isinstance(value.get("nodes"), list) and "links" in value:
        raise InvalidInputError(
            f"{what} is in ComfyUI's UI format: export it with 'Save (API format)'"
        )
    if not isinstance(value, dict) or not value:
        raise InvalidInputError(
            f"{what} must be a non-empty JSON object of nodes (ComfyUI's API format)"
        )
    for node_id, node in value.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if not isinstance(class_type, str) or not class_type.strip():
            raise InvalidInputError(
                f"{what}: node {node_id!r} has no class_type (is it ComfyUI's API format?)"
            )
        if not isinstance(node.get("inputs"), dict):
            raise InvalidInputError(f"{what}: node {node_id} ({class_type}) has no inputs object")
        for name, link in node["inputs"].items():
            if _is_link(link) and link[0] not in value:
                raise InvalidInputError(
                    f"{what}: node {node_id} ({class_type}) input {name!r} links to missing "
                    f"node {link[0]!r}"
                )
    return _json(value, what, dict)


def _is_link(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _apply(session: Session, profile: GenerationProfile, values: dict[str, Any]) -> None:
    unknown = sorted(set(values) - set(PROFILE_FIELDS))
    if unknown:
        raise InvalidInputError(
            f"unknown profile field {', '.join(unknown)}: use {', '.join(PROFILE_FIELDS)}"
        )
    for field, value in values.items():
        if field == "checkpoint":
            profile.checkpoint_id = (
                None if value is None else register_checkpoint(session, value).id
            )
        elif field == "lora_strength":
            if value is None:
                raise InvalidInputError("the LoRA strength cannot be unset: give a number (0.8)")
            profile.lora_strength = _setting(value, "LoRA strength", "lora_strength")
        else:
            template = None if value is None else validate_workflow_template(value, field)
            setattr(profile, field, template)


def _make_default(session: Session, profile: GenerationProfile) -> None:
    for other in session.scalars(
        select(GenerationProfile).where(GenerationProfile.project_id == profile.project_id)
    ):
        other.is_default = other.id == profile.id
    session.flush()


def add_profile(
    session: Session, project_slug: str, name: str, *, default: bool = False, **values: Any
) -> GenerationProfile:
    """A new profile of the project (fields: PROFILE_FIELDS); it becomes the project's default
    when asked, or when the project has none yet (a lone profile that is never used would
    surprise)."""
    project = get_project(session, project_slug)
    validate_slug(name, "profile name")
    conflict = ConflictError(f"project {project_slug!r} already has a profile {name!r}")
    if _profile_named(session, project, name) is not None:
        raise conflict
    first = _default_of(session, project) is None
    profile = GenerationProfile(project_id=project.id, name=name, is_default=False)
    _apply(session, profile, {k: v for k, v in values.items() if v is not None})
    if not _try_insert(session, profile):
        raise conflict
    if default or first:
        _make_default(session, profile)
    return profile


def update_profile(
    session: Session, project_slug: str, name: str, *, default: bool = False, **values: Any
) -> GenerationProfile:
    """Change a profile (a value of None unsets it) and, with `default`, make it the
    project's default."""
    profile = get_profile(session, project_slug, name)
    if not values and not default:
        raise InvalidInputError(f"nothing to change: give one of {', '.join(PROFILE_FIELDS)}")
    _apply(session, profile, values)
    session.flush()
    if default:
        _make_default(session, profile)
    return profile


def set_project_checkpoint(
    session: Session, project_slug: str, checkpoint: str | None
) -> GenerationProfile:
    """The checkpoint of the project's default profile (None: back to the studio's base
    model); a project without one gets a default profile named "default"."""
    project = get_project(session, project_slug)
    profile = _default_of(session, project)
    if profile is None:
        profile = _profile_named(session, project, DEFAULT_PROFILE_NAME)
        if profile is None:
            return add_profile(
                session, project_slug, DEFAULT_PROFILE_NAME, default=True, checkpoint=checkpoint
            )
        _make_default(session, profile)
    return update_profile(session, project_slug, profile.name, checkpoint=checkpoint)
