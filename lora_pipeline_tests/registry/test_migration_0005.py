"""Migration 0005: frames recorded twice by earlier reruns are merged (images keep pointing at
the frame kept), then (source, frame index) is unique; sources get run_id and started_at."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, alembic_config, make_engine, migrate

_FRAME = (
    "INSERT INTO frames (id, source_id, sha256, path, frame_index, timestamp_s, width, height, "
    "created_at) VALUES (:id, 1, :sha, 'p', :index, 0, 8, 8, '2026-01-01')"
)


def _seed(url: str) -> None:
    """Source 1 with frames 1 (index 0) and 2 (index 1), and an image of frame 2."""
    registry = Registry(url)
    with registry.session() as session:
        commands.add_project(session, "demo", "Demo")
        character = commands.add_character(session, "demo", "aiko", "Aiko")
        source = commands.create_source(session, "demo", "url", "https://x/v", "aiko")
        for index, sha in ((0, "a"), (1, "b")):
            frame, _ = commands.add_frame(session, source.id, sha * 64, "f.png", index, 0, 8, 8)
        commands.add_image(
            session, character.id, "f" * 64, "i.png", 8, 8, "frame", frame_id=frame.id
        )
    registry.dispose()


def test_duplicate_frames_are_merged_and_then_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    _seed(url)
    config = alembic_config(url)
    command.downgrade(config, "0004")
    engine = make_engine(url, sqlite_foreign_keys=False)
    try:
        with engine.begin() as c:
            # What a rerun after a kill recorded before 0005: the same indices again.
            for frame_id, index, sha in ((3, 0, "c"), (4, 1, "d")):
                c.execute(text(_FRAME), {"id": frame_id, "sha": sha * 64, "index": index})
            c.execute(text("UPDATE images SET frame_id = 4"))
    finally:
        engine.dispose()
    migrate(url)
    engine = make_engine(url)
    try:
        with engine.begin() as c:
            frames = c.execute(text("SELECT id, frame_index FROM frames ORDER BY id")).all()
            assert [tuple(row) for row in frames] == [(1, 0), (2, 1)]
            assert c.execute(text("SELECT frame_id FROM images")).scalar() == 2
            columns = {col["name"] for col in inspect(c).get_columns("sources")}
            assert {"run_id", "started_at"} <= columns
        with pytest.raises(IntegrityError), engine.begin() as c:
            c.execute(text(_FRAME), {"id": 5, "sha": "e" * 64, "index": 0})
    finally:
        engine.dispose()
