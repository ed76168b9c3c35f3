"""A frame filter added to the registry reaches the ingested_frames materialisation's metadata
through Dagster, with no change to the asset (one class plus one registration)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from lora_pipeline.config import Settings
from lora_pipeline.defs.instance import materialize_partition
from lora_pipeline.media.store import DataRoot
from lora_pipeline.media.uploads import store_upload
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline_tests.media.conftest import synthetic_video  # noqa: F401 - fixture
from lora_pipeline_tests.media.test_frames import register_even_index_only


def test_registered_filter_counters_are_in_the_ingest_metadata(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    synthetic_video: Path,  # noqa: F811
) -> None:
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(tmp_path / "home"))
    for name in ("DATABASE_URL", "DATA_ROOT", "IDENTIFIER", "COMFYUI_OUTPUT_DIR", "MIN_SIDE"):
        monkeypatch.delenv(f"LORA_PIPELINE_{name}", raising=False)
    register_even_index_only(monkeypatch)
    settings = Settings.from_env()
    settings.ensure_dirs()
    migrate(settings.database_url)
    registry = Registry(settings.database_url)
    video = store_upload(synthetic_video, DataRoot(settings.data_root))
    with registry.session() as session:
        commands.add_project(session, "demo", "Demo")
        commands.add_character(session, "demo", "aiko", "Aiko", design_prompt="red coat")
        source_id = commands.create_source(
            session, "demo", video.kind, video.relpath, "aiko", fps=2.0, max_frames=8
        ).id
    registry.dispose()
    # The clip is 160x120: this run accepts small frames.
    config = {"ops": {"ingested_frames": {"config": {"source_ids": [source_id], "min_side": 64}}}}

    with DagsterInstance.ephemeral() as instance:
        assert materialize_partition(instance, "aiko", ["ingested_frames"], config)
        event = instance.get_latest_materialization_event(AssetKey("ingested_frames"))
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}

    counters = metadata["frame_filters"]
    # Every registered filter (Dagster sorts JSON keys); blurry is off by default: zeros.
    assert set(counters) == {
        "too_small",
        "duplicates",
        "static",
        "near_duplicates",
        "blurry",
        "odd_index",
    }
    assert counters["blurry"] == {"kept": 0, "dropped": 0}
    assert counters["odd_index"]["dropped"] == metadata["odd_index_dropped"] >= 1
    assert counters["odd_index"]["kept"] == metadata["frames_kept"]
    # The keys that were there before the filters became pluggable are still there.
    for name in ("duplicates", "static", "near_duplicates", "blurry", "too_small"):
        assert f"{name}_dropped" in metadata
