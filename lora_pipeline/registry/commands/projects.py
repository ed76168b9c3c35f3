"""Commands on projects and their settings (eval grid, gate thresholds, licence)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lora_pipeline.registry.commands._rows import _try_insert
from lora_pipeline.registry.commands._validate import _real, _setting, _text, validate_slug
from lora_pipeline.registry.errors import ConflictError, InvalidInputError, NotFoundError
from lora_pipeline.registry.models import Project


def get_project(session: Session, slug: str) -> Project:
    project = session.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        raise NotFoundError(f"unknown project {slug!r}")
    return project


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
    # The similarity reference matching needs in this project (LORA_PIPELINE_REFERENCE_THRESHOLD
    # otherwise); a combined identifier asks its VLM below it.
    "match_threshold": (-1.0, 1.0),
}
LICENCE_FIELDS = ("licence", "author", "source_url", "notes")
# Seed 004: no release of the project is approved without a licence recorded.
FLAG_SETTINGS = ("require_licence",)
PROJECT_SETTINGS = (
    "eval_prompts",
    "eval_seeds",
    *_THRESHOLD_RANGES,
    *LICENCE_FIELDS,
    *FLAG_SETTINGS,
)
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
        seeds = [_setting(v, "eval seed", "seed") for v in value]
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
    if key in FLAG_SETTINGS:
        if not isinstance(value, bool):
            raise InvalidInputError(f"{key} must be true or false, got {value!r}")
        return value
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
