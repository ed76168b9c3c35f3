"""Registry fixtures: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.models import Character, Project
from lora_pipeline_tests.pg import postgres_database_url, reset_schema


@pytest.fixture(scope="session")
def postgres_session_url() -> Iterator[str]:
    """One fresh database for the whole test session, dropped at the end."""
    with postgres_database_url("lp_test_registry") as url:
        yield url


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty, not yet migrated registry database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry' / 'registry.db'}"
    url: str = request.getfixturevalue("postgres_session_url")
    reset_schema(url)
    return url


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    """A migrated registry; its connections are closed after the test."""
    migrate(registry_url)
    registry = Registry(registry_url)
    yield registry
    registry.dispose()


@pytest.fixture
def session(registry: Registry) -> Iterator[Session]:
    """A session in one transaction, committed at the end of the test."""
    with registry.session() as session:
        yield session


def make_cast(session: Session) -> tuple[Project, Character, Character]:
    """Project 'show' with characters 'aiko' and 'kenji'."""
    project = commands.add_project(session, "show", "The Show", style_prompt="anime style")
    aiko = commands.add_character(session, "show", "aiko", "Aiko", design_prompt="teal hair")
    kenji = commands.add_character(session, "show", "kenji", "Kenji", design_prompt="black hair")
    return project, aiko, kenji


def sha(n: int) -> str:
    """A distinct valid sha256 hex digest for test number `n`."""
    return f"{n:064x}"


def passed_gate(session: Session, release_id: int) -> None:
    """Record a passing eval for a release, as eval_grid does, so that it may be activated."""
    commands.record_eval(
        session, release_id, {}, f"evals/{release_id}/grid.png", [], {"lora_effect": 0.1}, "pass"
    )
