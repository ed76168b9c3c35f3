"""Migration 0009: every sensor query has an index, on SQLite and PostgreSQL; a registry with
rows upgrades in place and downgrades back without them."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect, text

from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, alembic_config, make_engine, migrate

SENSOR_INDEXES = {
    "images": {("reviewed_at",), ("character_id", "reviewed_at")},
    "sources": {("state", "id")},
    "generation_jobs": {("status", "id")},
    "lora_releases": {("dataset_version_id",)},
}


def _indexes(url: str) -> dict[str, set[tuple[str, ...]]]:
    engine = make_engine(url)
    try:
        inspector = inspect(engine)
        return {
            table: {tuple(ix["column_names"]) for ix in inspector.get_indexes(table)}
            for table in SENSOR_INDEXES
        }
    finally:
        engine.dispose()


def _seed(url: str) -> None:
    registry = Registry(url)
    with registry.session() as session:
        commands.add_project(session, "demo", "Demo")
        character = commands.add_character(session, "demo", "aiko", "Aiko")
        commands.create_source(session, "demo", "url", "https://x/v", "aiko")
        image, _ = commands.add_image(session, character.id, "a" * 64, "i.png", 8, 8, "generated")
        commands.approve_image(session, image.id)
    registry.dispose()


def test_sensor_indexes_come_and_go_with_the_migration(registry_url: str) -> None:
    migrate(registry_url)
    _seed(registry_url)
    present = _indexes(registry_url)
    for table, wanted in SENSOR_INDEXES.items():
        assert wanted <= present[table], table
    command.downgrade(alembic_config(registry_url), "0008")
    gone = _indexes(registry_url)
    for table, wanted in SENSOR_INDEXES.items():
        assert not wanted & gone[table], table
    migrate(registry_url)
    assert _indexes(registry_url) == present
    engine = make_engine(registry_url)
    try:
        with engine.connect() as c:
            assert (
                c.execute(
                    text("SELECT count(*) FROM images WHERE reviewed_at IS NOT NULL")
                ).scalar()
                == 1
            )
    finally:
        engine.dispose()
