"""A character's generation profile (seed 001): what its project's default profile says it
generates, evaluates and trains with.

`character_profile` is the one place that reads it; `ModelRuntime.for_character` applies it
over the studio's settings (a profile without a checkpoint keeps LORA_PIPELINE_BASE_MODEL),
and every stage of a character (local and ComfyUI generation, the eval grid, the dataset
layout, training) runs on that runtime. `check_template` refuses, before it is stored, a
workflow template the pipeline could not fill.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from lora_pipeline.generation.workflows import (
    Workflow,
    WorkflowSettings,
    character_workflow,
    validate_workflow,
)
from lora_pipeline.registry import queries
from lora_pipeline.registry.models import Character, Model

# The LoRA strength of production generations when the project has no profile.
DEFAULT_LORA_STRENGTH = 0.8


@dataclass(frozen=True)
class CharacterProfile:
    """The profile as the character uses it; None: the studio's setting (the configured base
    model, the shipped workflow template)."""

    character: str
    name: str | None = None  # the profile's name; None: the project has no default profile
    # A diffusers folder, a single-file checkpoint or a hub id, as the trainer loads it.
    checkpoint: str | None = None
    # The same checkpoint as ComfyUI lists it (its file name).
    comfyui_checkpoint: str | None = None
    workflow: Workflow | None = None
    video_workflow: Workflow | None = None
    lora_strength: float = DEFAULT_LORA_STRENGTH


def character_profile(session: Session, character: Character) -> CharacterProfile:
    """The character's project's default generation profile, resolved."""
    profile = queries.default_profile(session, character.project_id)
    if profile is None:
        return CharacterProfile(character.slug)
    model = session.get(Model, profile.checkpoint_id) if profile.checkpoint_id else None
    return CharacterProfile(
        character=character.slug,
        name=profile.name,
        checkpoint=model.path if model else None,
        comfyui_checkpoint=model.name if model else None,
        workflow=profile.workflow_template,
        video_workflow=profile.video_workflow_template,
        lora_strength=profile.lora_strength,
    )


def check_template(kind: str, workflow: object) -> Workflow:
    """`workflow` if the pipeline can fill it as a `kind` ("image" or "video") template, both
    without a LoRA and with one; else a `WorkflowError` with one line. Checked when a profile
    is saved, so that a broken template fails there and not in every later job."""
    template = validate_workflow(workflow)
    sample = WorkflowSettings(checkpoint="checkpoint.safetensors", prompt="a check")
    character_workflow(kind, sample, template=template)
    character_workflow(kind, sample, "character.safetensors", DEFAULT_LORA_STRENGTH, template)
    return template
