"""The Gallery's ComfyUI outputs that matched no character: listed with "ingest into
character …", which makes a single-mode source the ComfyUI output sensor then runs; once only,
CSRF-checked like every form."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, build_sensor_context
from PIL import Image

from lora_pipeline.defs.resources import RegistryResource
from lora_pipeline.defs.sensors import comfyui_output_sensor
from lora_pipeline.media.comfyui_scan import register_new_outputs
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.models import ComfyuiOutputFile, Source
from lora_pipeline_tests.review.conftest import Studio


@pytest.fixture
def unmatched(studio: Studio, tmp_path: Path) -> int:
    """A ComfyUI output file whose name names no character (two projects: no default)."""
    folder = tmp_path / "comfyui-output"
    folder.mkdir()
    image = folder / "ComfyUI_00042_.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(image)
    os.utime(image, (time.time() - 600, time.time() - 600))  # settled: ComfyUI wrote it long ago
    result = register_new_outputs(studio.registry, folder, None, lambda _: None, limit=10)
    assert result.unmatched == ["ComfyUI_00042_.png"]
    with studio.registry.session() as session:
        (row,) = queries.unassigned_comfyui_outputs(session)
        return row.id


def test_an_unmatched_output_is_listed_and_ingested_into_the_chosen_character(
    studio: Studio, unmatched: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    page = studio.client.get("/gallery").text
    assert "ComfyUI_00042_.png" in page and f"/gallery/comfyui/{unmatched}/ingest" in page
    token = studio.csrf()
    done = studio.client.post(
        f"/gallery/comfyui/{unmatched}/ingest",
        data={"csrf_token": token, "character": "kenji"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    with studio.registry.session() as session:
        row = session.get(ComfyuiOutputFile, unmatched)
        source = session.get(Source, row.source_id)
        assert (source.kind, source.uri, source.mode) == ("comfyui_output", row.relpath, "single")
        kenji = commands.get_character(session, "kenji")
        assert source.character_id == kenji.id and row.note is None
        source_id = source.id
    assert "ComfyUI_00042_.png" not in studio.client.get("/gallery").text
    again = studio.client.post(
        f"/gallery/comfyui/{unmatched}/ingest", data={"csrf_token": token, "character": "aiko"}
    )
    assert again.status_code == 409 and "already being ingested" in again.text
    # The ComfyUI output sensor runs it for kenji.
    monkeypatch.setenv("LORA_PIPELINE_COMFYUI_OUTPUT_DIR", str(tmp_path / "comfyui-output"))
    with DagsterInstance.ephemeral() as instance:
        context = build_sensor_context(
            instance=instance,
            resources={"registry": RegistryResource(database_url=studio.registry.url)},
        )
        (run,) = comfyui_output_sensor(context).run_requests
    assert run.partition_key == "kenji"
    assert run.run_config["ops"]["ingested_frames"]["config"]["source_ids"] == [source_id]


def test_bad_requests_change_nothing(studio: Studio, unmatched: int) -> None:
    token = studio.csrf()
    path = f"/gallery/comfyui/{unmatched}/ingest"
    assert studio.client.post(path, data={"character": "kenji"}).status_code == 403
    unknown = studio.client.post(path, data={"csrf_token": token, "character": "nobody"})
    assert unknown.status_code == 404
    missing = studio.client.post(
        "/gallery/comfyui/999/ingest", data={"csrf_token": token, "character": "kenji"}
    )
    assert missing.status_code == 404
    out_of_range = studio.client.post(
        "/gallery/comfyui/0/ingest", data={"csrf_token": token, "character": "kenji"}
    )
    assert out_of_range.status_code == 404
    with studio.registry.session() as session:
        assert session.get(ComfyuiOutputFile, unmatched).source_id is None
        assert session.query(Source).count() == 0
