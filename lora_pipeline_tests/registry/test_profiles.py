"""Generation profiles: validation, the project's one default, checkpoints as `models` rows."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.errors import ConflictError, InvalidInputError, NotFoundError
from lora_pipeline.registry.models import GenerationProfile, Model
from lora_pipeline_tests.registry.conftest import make_cast

IMAGE = json.loads(
    resources.files("lora_pipeline.generation").joinpath("workflows/image.json").read_text()
)


def defaults(session: Session, project_id: int) -> list[str]:
    return list(
        session.scalars(
            select(GenerationProfile.name).where(
                GenerationProfile.project_id == project_id, GenerationProfile.is_default.is_(True)
            )
        )
    )


def test_the_first_profile_is_the_default_and_default_moves(session: Session) -> None:
    project, _, _ = make_cast(session)
    first = commands.add_profile(session, "show", "realism", lora_strength=0.65)
    assert (first.is_default, first.lora_strength, first.checkpoint_id) == (True, 0.65, None)
    second = commands.add_profile(session, "show", "anime", workflow_template=IMAGE)
    assert second.lora_strength == 0.8 and second.workflow_template == IMAGE
    assert defaults(session, project.id) == ["realism"]
    commands.update_profile(session, "show", "anime", default=True)
    assert defaults(session, project.id) == ["anime"]
    assert queries.default_profile(session, project.id).name == "anime"
    third = commands.add_profile(session, "show", "noir", default=True)
    assert third.is_default and defaults(session, project.id) == ["noir"]


def test_a_checkpoint_is_a_models_row_named_by_its_file(session: Session) -> None:
    make_cast(session)
    profile = commands.add_profile(
        session, "show", "realism", checkpoint="/models/anything-v5.safetensors"
    )
    model = session.get(Model, profile.checkpoint_id)
    assert (model.kind, model.name, model.path) == (
        "checkpoint",
        "anything-v5.safetensors",
        "/models/anything-v5.safetensors",
    )
    # The same path is the same row; the same name at a new path is the file having moved.
    other = commands.add_profile(
        session, "show", "other", checkpoint="/models/anything-v5.safetensors"
    )
    assert other.checkpoint_id == model.id
    moved = commands.register_checkpoint(session, "/new/anything-v5.safetensors")
    assert moved.id == model.id and model.path == "/new/anything-v5.safetensors"
    assert commands.register_checkpoint(session, "runwayml/stable-diffusion-v1-5").name == (
        "stable-diffusion-v1-5"
    )
    session.add(Model(name="aiko.safetensors", kind="lora", path="/loras/aiko.safetensors"))
    with pytest.raises(ConflictError, match="already a lora model"):
        commands.register_checkpoint(session, "/models/aiko.safetensors")
    commands.update_profile(session, "show", "realism", checkpoint=None)
    assert profile.checkpoint_id is None


def test_project_checkpoint_sets_the_default_profile_or_makes_one(session: Session) -> None:
    project, _, _ = make_cast(session)
    made = commands.set_project_checkpoint(session, "show", "/models/a.safetensors")
    assert (made.name, made.is_default) == ("default", True)
    assert session.get(Model, made.checkpoint_id).path == "/models/a.safetensors"
    commands.add_profile(session, "show", "anime", default=True)
    changed = commands.set_project_checkpoint(session, "show", "/models/b.safetensors")
    assert changed.name == "anime"
    assert session.get(Model, made.checkpoint_id).path == "/models/a.safetensors"
    assert defaults(session, project.id) == ["anime"]


def _without(node_id: str) -> dict:
    workflow = copy.deepcopy(IMAGE)
    del workflow[node_id]
    return workflow


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workflow_template": []}, "non-empty JSON object of nodes"),
        ({"workflow_template": {}}, "non-empty JSON object of nodes"),
        ({"workflow_template": {"nodes": [], "links": []}}, "UI format"),
        ({"workflow_template": {"1": {"inputs": {}}}}, "node '1' has no class_type"),
        ({"workflow_template": {"1": {"class_type": "X"}}}, "node 1 (X) has no inputs"),
        ({"video_workflow_template": _without("1")}, "links to missing node '1'"),
        ({"workflow_template": {"1": {"class_type": "X", "inputs": {"v": float("nan")}}}}, "JSON"),
        ({"lora_strength": "strong"}, "LoRA strength"),
        ({"lora_strength": 101}, "LoRA strength"),
        ({"checkpoint": ""}, "checkpoint must not be empty"),
        ({"checkpoint": "/models/\nx"}, "control characters"),
        ({"checkpoint": "/"}, "names no file"),
        ({"sampler": "euler"}, "unknown profile field sampler"),
    ],
)
def test_bad_values_are_one_readable_line(session: Session, values: dict, message: str) -> None:
    make_cast(session)
    with pytest.raises(InvalidInputError, match=re.escape(message)) as caught:
        commands.add_profile(session, "show", "bad", **values)
    assert "\n" not in str(caught.value)
    assert queries.generation_profiles(session) == []


def test_names_conflicts_and_unknowns(session: Session) -> None:
    make_cast(session)
    with pytest.raises(InvalidInputError, match="invalid profile name"):
        commands.add_profile(session, "show", "Tokyo Realism")
    with pytest.raises(NotFoundError, match="unknown project 'nope'"):
        commands.add_profile(session, "nope", "realism")
    commands.add_profile(session, "show", "realism")
    with pytest.raises(ConflictError, match="already has a profile 'realism'"):
        commands.add_profile(session, "show", "realism")
    with pytest.raises(NotFoundError, match="has no generation profile 'anime'"):
        commands.update_profile(session, "show", "anime", lora_strength=1.0)
    with pytest.raises(InvalidInputError, match="nothing to change"):
        commands.update_profile(session, "show", "realism")
    with pytest.raises(InvalidInputError, match="cannot be unset"):
        commands.update_profile(session, "show", "realism", lora_strength=None)
