"""Migration 0002: perceptual hashes, frame generation parameters, seen ComfyUI outputs."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from lora_pipeline.registry.db import Registry, alembic_config, make_engine, migrate
from lora_pipeline.registry.models import Base, ComfyuiOutputFile
from lora_pipeline_tests.registry.test_db import HEAD, schema_diff


def _columns(url: str, table: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_upgrade_from_0001_keeps_rows_and_matches_models(registry_url: str) -> None:
    config = alembic_config(registry_url)
    command.upgrade(config, "0001")
    assert "phash" not in _columns(registry_url, "frames")
    engine = make_engine(registry_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO projects (slug, name, description, style_prompt, created_at) "
                    "VALUES ('show', 'Show', '', '', CURRENT_TIMESTAMP)"
                )
            )
    finally:
        engine.dispose()
    assert migrate(registry_url) == HEAD
    assert {"phash", "generation_params"} <= _columns(registry_url, "frames")
    assert "phash" in _columns(registry_url, "images")
    assert schema_diff(registry_url, Base.metadata) == []
    engine = make_engine(registry_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT slug FROM projects")).scalar() == "show"
    finally:
        engine.dispose()


def test_downgrade_to_0001_removes_what_0002_added(registry_url: str) -> None:
    migrate(registry_url)
    command.downgrade(alembic_config(registry_url), "0001")
    assert "phash" not in _columns(registry_url, "frames")
    assert "phash" not in _columns(registry_url, "images")
    engine = make_engine(registry_url)
    try:
        assert "comfyui_output_files" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_a_comfyui_file_is_known_by_path_size_and_mtime(registry_url: str) -> None:
    migrate(registry_url)
    registry = Registry(registry_url)
    try:
        with registry.session() as session:
            session.add(ComfyuiOutputFile(relpath="aiko_00001_.png", size=10, mtime_ns=5))
            session.add(ComfyuiOutputFile(relpath="aiko_00001_.png", size=11, mtime_ns=6))
        with pytest.raises(IntegrityError), registry.session() as session:
            session.add(ComfyuiOutputFile(relpath="aiko_00001_.png", size=10, mtime_ns=5))
            session.flush()
    finally:
        registry.dispose()
