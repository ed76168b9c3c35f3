"""Images are unique per (character, sha256) in the database itself, not only in the code that
adds them: a rerun (a retried ingest, a second process) can never record one picture twice for
a character, whatever path it takes. The same picture may belong to two characters."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from lora_pipeline.registry import commands
from lora_pipeline.registry.models import Image
from lora_pipeline_tests.media.conftest import demo_registry

SHA = "ab" * 32


def _row(character_id: int) -> Image:
    return Image(
        character_id=character_id,
        sha256=SHA,
        path=f"images/ab/{SHA}.png",
        width=8,
        height=8,
        origin="frame",
    )


def test_one_picture_is_one_image_row_per_character(tmp_path: Path) -> None:
    registry = demo_registry(tmp_path)
    try:
        with registry.session() as session:
            aiko = commands.get_character(session, "aiko").id
            kenji = commands.get_character(session, "kenji").id
            session.add_all([_row(aiko), _row(kenji)])  # two characters: allowed
        with pytest.raises(IntegrityError), registry.session() as session:
            session.add(_row(aiko))  # bypassing add_image: the database refuses it
            session.flush()
    finally:
        registry.dispose()
