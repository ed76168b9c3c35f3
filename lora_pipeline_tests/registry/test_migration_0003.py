"""Migration 0003: project settings, the parent release, one active release per checkpoint."""

from __future__ import annotations

import importlib

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from lora_pipeline.registry.db import alembic_config, make_engine, migrate
from lora_pipeline.registry.models import Base
from lora_pipeline_tests.registry.test_db import HEAD, schema_diff
from lora_pipeline_tests.registry.test_migration_0002 import _columns

RELEASE = (
    "INSERT INTO lora_releases (character_id, base_checkpoint, path, sha256, status, scope, "
    "hyperparameters, created_at) VALUES (1, :checkpoint, 'l.safetensors', :sha, :status, "
    ":scope, '{}', CURRENT_TIMESTAMP)"
)


def _seed_0002(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO projects (slug, name, description, style_prompt, created_at) "
                    "VALUES ('show', 'Show', '', '', CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO characters (project_id, slug, name, trigger_word, design_prompt,"
                    " negative_prompt, cfg, steps, sampler, scheduler, width, height, created_at,"
                    " updated_at) VALUES (1, 'aiko', 'Aiko', 'aiko_x', '', '', 7, 20, 'euler',"
                    " 'normal', 512, 512, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(
                text(RELEASE),
                {
                    "checkpoint": "a.safetensors",
                    "sha": "1" * 64,
                    "status": "active",
                    "scope": "project",
                },
            )
    finally:
        engine.dispose()


def _insert_release(url: str, checkpoint: str, sha: str, scope: str = "project") -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(RELEASE),
                {"checkpoint": checkpoint, "sha": sha, "status": "active", "scope": scope},
            )
    finally:
        engine.dispose()


def test_upgrade_from_0002_keeps_rows_and_matches_models(registry_url: str) -> None:
    command.upgrade(alembic_config(registry_url), "0002")
    _seed_0002(registry_url)
    assert migrate(registry_url) == HEAD
    assert "settings" in _columns(registry_url, "projects")
    assert "parent_release_id" in _columns(registry_url, "lora_releases")
    assert schema_diff(registry_url, Base.metadata) == []
    engine = make_engine(registry_url)
    try:
        with engine.connect() as connection:
            settings = connection.execute(text("SELECT settings FROM projects")).scalar()
            release = connection.execute(
                text("SELECT status, base_checkpoint FROM lora_releases")
            ).one()
    finally:
        engine.dispose()
    assert settings in ({}, "{}")
    # Still active, and stored by the checkpoint's key so that generations still find it.
    assert tuple(release) == ("active", "a")


def test_one_active_release_per_character_and_checkpoint(registry_url: str) -> None:
    command.upgrade(alembic_config(registry_url), "0002")
    _seed_0002(registry_url)
    migrate(registry_url)
    _insert_release(registry_url, "b.safetensors", "2" * 64)  # another checkpoint: allowed
    with pytest.raises(IntegrityError):
        _insert_release(registry_url, "a", "3" * 64)  # the seeded release, keyed


def test_downgrade_to_0002_keeps_one_active_release_per_character(registry_url: str) -> None:
    command.upgrade(alembic_config(registry_url), "0002")
    _seed_0002(registry_url)
    migrate(registry_url)
    _insert_release(registry_url, "b.safetensors", "2" * 64)
    command.downgrade(alembic_config(registry_url), "0002")
    assert "settings" not in _columns(registry_url, "projects")
    engine = make_engine(registry_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT id, status FROM lora_releases ORDER BY id"))
            assert rows.all() == [(1, "approved"), (2, "active")]
    finally:
        engine.dispose()


def test_the_offline_sql_keys_checkpoints_like_the_online_upgrade(registry_url: str) -> None:
    """`alembic upgrade --sql` (PostgreSQL) runs SQL instead of Python: same result."""
    migration = importlib.import_module("lora_pipeline.registry.migrations.versions.0003_releases")
    if not registry_url.startswith("postgresql"):
        pytest.skip("the offline script is for PostgreSQL (regexp_replace)")
    command.upgrade(alembic_config(registry_url), "0002")
    _seed_0002(registry_url)
    engine = make_engine(registry_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(RELEASE),
                {
                    "checkpoint": "C:\\sd\\B.CKPT",
                    "sha": "2" * 64,
                    "status": "candidate",
                    "scope": "project",
                },
            )
            connection.execute(text(migration.OFFLINE_KEY_CHECKPOINTS))
            connection.execute(text(migration.OFFLINE_DEMOTE_DUPLICATES))
            rows = connection.execute(
                text("SELECT base_checkpoint, status FROM lora_releases ORDER BY id")
            ).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [("a", "active"), ("B", "candidate")]
