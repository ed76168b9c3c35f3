"""One set of generation limits: each boundary is accepted and one past it refused, the same way
by the settings model, the typed-number parser, the registry, the workflow builder and a local
request (the CLI and the review form are tested in test_cli.py and review/test_actions.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from lora_pipeline.errors import PipelineError, user_message
from lora_pipeline.generation.local import GenerationError, GenerationRequest
from lora_pipeline.generation.workflows import WorkflowError, WorkflowSettings
from lora_pipeline.generation_settings import (
    LIMITS,
    MAX_SEED,
    GenerationSettings,
    InvalidSettingError,
    parse_number,
    parse_optional_number,
)
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.errors import InvalidInputError

# (setting, lowest accepted, highest accepted, one below, one above)
BOUNDARIES = [
    ("seed", 0, MAX_SEED, -1, MAX_SEED + 1),
    ("steps", 1, 10_000, 0, 10_001),
    ("cfg", 0.0, 100.0, -0.01, 100.01),
    ("width", 16, 16_384, 8, 16_392),
    ("height", 16, 16_384, 8, 16_392),
    ("lora_strength", -100.0, 100.0, -100.01, 100.01),
    ("frames", 1, 10_000, 0, 10_001),
    ("frame_rate", 0.01, 240.0, 0.0, 240.01),
]
EDGES = [
    pytest.param(name, value, id=f"{name}={value}")
    for name, low, high, _, _ in BOUNDARIES
    for value in (low, high)
]
PAST = [
    pytest.param(name, value, id=f"{name}={value}")
    for name, _, _, below, above in BOUNDARIES
    for value in (below, above)
]
# The settings the registry keeps per character, and those a workflow and a request take.
CHARACTER = ("seed", "steps", "cfg", "width", "height")
WORKFLOW = {"seed": "seed", "steps": "steps", "cfg": "cfg", "width": "width", "height": "height"}
WORKFLOW |= {"frames": "frames", "frame_rate": "frame_rate"}


def test_the_limits_are_comfyuis_but_the_seed_fits_a_bigint() -> None:
    assert MAX_SEED == 2**63 - 1
    assert (LIMITS["steps"].low, LIMITS["steps"].high) == (1, 10_000)
    assert (LIMITS["cfg"].low, LIMITS["cfg"].high) == (0.0, 100.0)
    assert GenerationSettings.model_json_schema()["properties"]["steps"]["maximum"] == 10_000


@pytest.mark.parametrize(("name", "value"), EDGES)
def test_each_boundary_is_accepted(name: str, value: float) -> None:
    assert getattr(GenerationSettings.of({name: value}), name) == value


@pytest.mark.parametrize(("name", "value"), PAST)
def test_one_past_each_boundary_is_refused_in_one_line(name: str, value: float) -> None:
    with pytest.raises(InvalidSettingError, match=f"^{name} must be between ") as caught:
        GenerationSettings.of({name: value})
    assert isinstance(caught.value, PipelineError) and isinstance(caught.value, ValueError)
    assert "\n" not in user_message(caught.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"width": 500}, "width must be a multiple of 8, got 500"),
        ({"steps": True}, "steps must be a whole number between 1 and 10000, got True"),
        ({"steps": "20"}, "steps must be a whole number"),
        ({"cfg": float("nan")}, "cfg must be a number between 0 and 100, got nan"),
        ({"sampler": " "}, "sampler must not be empty"),
        ({"colour": "red"}, "unknown generation setting 'colour'"),
    ],
)
def test_bad_values_are_named_in_one_line(values: dict, message: str) -> None:
    with pytest.raises(InvalidSettingError, match=message):
        GenerationSettings.of(values)


@pytest.mark.parametrize(("name", "value"), EDGES)
def test_typed_boundaries_are_accepted(name: str, value: float) -> None:
    assert parse_number(f" {value} ", name, LIMITS[name]) == value


@pytest.mark.parametrize(("name", "value"), PAST)
def test_typed_values_past_a_boundary_are_refused(name: str, value: float) -> None:
    with pytest.raises(InvalidSettingError, match=f"^{name} must be between "):
        parse_number(str(value), name, LIMITS[name])


def test_typed_text_that_is_no_number_names_the_field_and_its_range() -> None:
    with pytest.raises(InvalidSettingError, match=r"^seed must be a whole number between 0 and "):
        parse_number("1.5", "seed", LIMITS["seed"])
    with pytest.raises(InvalidSettingError, match=r"^cfg must be a number between 0 and 100"):
        parse_number("high", "cfg", LIMITS["cfg"])
    with pytest.raises(InvalidSettingError, match="cfg must be a finite number"):
        parse_number("inf", "cfg", LIMITS["cfg"])
    assert parse_optional_number("  ", "seed", LIMITS["seed"]) is None


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    registry = Registry(url)
    with registry.session() as session:
        commands.add_project(session, "show", "Show")
        yield session
    registry.dispose()


@pytest.mark.parametrize(("name", "value"), [p for p in EDGES if p.values[0] in CHARACTER])
def test_the_registry_stores_each_boundary(session: Session, name: str, value: float) -> None:
    character = commands.add_character(session, "show", "aiko", "Aiko", **{name: value})
    assert getattr(character, name) == value
    job = commands.create_generation_job(
        session, character.id, "aiko", "", LIMITS["seed"].high, {name: value}
    )
    assert job.seed == MAX_SEED and job.params[name] == value


@pytest.mark.parametrize(("name", "value"), [p for p in PAST if p.values[0] in CHARACTER])
def test_the_registry_refuses_past_a_boundary(session: Session, name: str, value: float) -> None:
    with pytest.raises(InvalidInputError, match=f"^{name} must be between "):
        commands.add_character(session, "show", "aiko", "Aiko", **{name: value})
    character = commands.add_character(session, "show", "ren", "Ren")
    with pytest.raises(InvalidInputError, match=f"^{name} must be between "):
        commands.create_generation_job(session, character.id, "ren", "", 1, {name: value})


def test_the_registry_refuses_a_job_seed_past_a_bigint(session: Session) -> None:
    character = commands.add_character(session, "show", "aiko", "Aiko")
    with pytest.raises(InvalidInputError, match=f"seed must be between 0 and {MAX_SEED}"):
        commands.create_generation_job(session, character.id, "aiko", "", MAX_SEED + 1, {})
    with pytest.raises(InvalidInputError, match="eval seed must be between 0 and"):
        commands.update_project_settings(session, "show", eval_seeds=[-1])


def _workflow(**change: object) -> WorkflowSettings:
    return WorkflowSettings(checkpoint="anime.safetensors", prompt="aiko", **change)


@pytest.mark.parametrize(("name", "value"), [p for p in EDGES if p.values[0] in WORKFLOW])
def test_the_workflow_builder_takes_each_boundary(name: str, value: float) -> None:
    assert getattr(_workflow(**{WORKFLOW[name]: value}), WORKFLOW[name]) == value


@pytest.mark.parametrize(("name", "value"), [p for p in PAST if p.values[0] in WORKFLOW])
def test_the_workflow_builder_refuses_past_a_boundary(name: str, value: float) -> None:
    with pytest.raises(WorkflowError, match=f"^{name} must be between "):
        _workflow(**{WORKFLOW[name]: value})


def test_the_workflow_builder_checks_lora_strengths_with_the_same_limit() -> None:
    from lora_pipeline.generation.workflows import inject_lora, load_template

    template = load_template("image")
    inject_lora(template, "aiko.safetensors", -100.0, 100.0)
    with pytest.raises(WorkflowError, match="LoRA model strength must be between -100 and 100"):
        inject_lora(template, "aiko.safetensors", 100.01, 1.0)


@pytest.mark.parametrize(("name", "value"), [p for p in EDGES if p.values[0] in CHARACTER])
def test_a_local_request_takes_each_boundary(name: str, value: float) -> None:
    assert getattr(GenerationRequest(prompt="aiko", **{name: value}), name) == value


@pytest.mark.parametrize(("name", "value"), [p for p in PAST if p.values[0] in CHARACTER])
def test_a_local_request_refuses_past_a_boundary(name: str, value: float) -> None:
    with pytest.raises(GenerationError, match=f"^{name} must be between "):
        GenerationRequest(prompt="aiko", **{name: value})
