"""Seed 004: a project can require a licence before any of its releases is approved; the
licence an approval used is recorded on the release (migration 0007)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, alembic_config, make_engine, migrate
from lora_pipeline.registry.errors import GateError, InvalidInputError
from lora_pipeline_tests.registry.conftest import make_cast, passed_gate
from lora_pipeline_tests.registry.test_jobs_releases import release_for


def test_a_project_that_requires_a_licence_refuses_approval_without_one(
    session: Session,
) -> None:
    _, aiko, _ = make_cast(session)
    commands.update_project_settings(session, "show", require_licence=True)
    release = release_for(session, aiko, 1)
    passed_gate(session, release.id)
    for status in ("approved", "active"):
        with pytest.raises(GateError, match="project 'show' requires a licence"):
            commands.set_release_status(session, release.id, status)
    assert session.get(type(release), release.id).status == "candidate"
    approved = commands.set_release_status(session, release.id, "approved", licence=" CC-BY-4.0 ")
    assert (approved.status, approved.licence) == ("approved", "CC-BY-4.0")
    # Activating an approved release keeps the licence it was approved under.
    assert commands.set_release_status(session, release.id, "active").licence == "CC-BY-4.0"


def test_the_project_or_dataset_licence_is_recorded_when_none_is_given(session: Session) -> None:
    _, aiko, kenji = make_cast(session)
    commands.update_project_settings(session, "show", require_licence=True, licence="studio-only")
    first = release_for(session, aiko, 1)
    passed_gate(session, first.id)
    assert commands.set_release_status(session, first.id, "approved").licence == "studio-only"
    commands.update_project_settings(session, "show", licence=None)
    version, _ = commands.record_dataset_version(
        session,
        kenji.id,
        "ab12cd34",
        {"images": [1], "provenance": {"license": "CC0-1.0"}},
        "datasets/kenji/m.json",
    )
    second = release_for(session, kenji, 2, dataset_version_id=version.id)
    passed_gate(session, second.id)
    assert commands.set_release_status(session, second.id, "active").licence == "CC0-1.0"


def test_without_the_requirement_approval_needs_no_licence(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    release = release_for(session, aiko, 1)
    passed_gate(session, release.id)
    approved = commands.set_release_status(session, release.id, "approved")
    assert (approved.status, approved.licence) == ("approved", None)


def test_require_licence_is_a_flag(session: Session) -> None:
    make_cast(session)
    with pytest.raises(InvalidInputError, match="require_licence must be true or false"):
        commands.update_project_settings(session, "show", require_licence="yes")
    project = commands.update_project_settings(session, "show", require_licence=True)
    assert project.settings["require_licence"] is True
    project = commands.update_project_settings(session, "show", require_licence=None)
    assert "require_licence" not in project.settings


def test_migration_0007_adds_the_licence_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    registry = Registry(url)
    with registry.session() as session:
        _, aiko, _ = make_cast(session)
        release_for(session, aiko, 1)
    registry.dispose()
    command.downgrade(alembic_config(url), "0006")
    engine = make_engine(url)
    try:
        with engine.connect() as c:
            assert "licence" not in {col["name"] for col in inspect(c).get_columns("lora_releases")}
        migrate(url)
        with engine.connect() as c:
            assert c.execute(text("SELECT licence FROM lora_releases")).all() == [(None,)]
    finally:
        engine.dispose()
