"""ingest_source: each kind of source to frames with provenance; failures stay per source."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.media.frames import FrameFilters
from lora_pipeline.media.ingest import IngestOptions, ingest_source
from lora_pipeline.media.phash import hash_from_hex
from lora_pipeline.media.store import DataRoot, sha256_file
from lora_pipeline.media.uploads import store_upload
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Source
from lora_pipeline_tests.media.conftest import LocalServer, demo_registry
from lora_pipeline_tests.media.test_comfyui_outputs import _graph, write_output
from lora_pipeline_tests.media.test_frames import register_even_index_only

SMALL_FRAMES = IngestOptions(filters=FrameFilters(min_side=64))


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    registry = demo_registry(tmp_path)
    yield registry
    registry.dispose()


@pytest.fixture
def root(tmp_path: Path) -> DataRoot:
    return DataRoot(tmp_path / "data")


def _source(registry: Registry, kind: str, uri: str, **kwargs: object) -> int:
    with registry.session() as session:
        return commands.create_source(
            session, "demo", kind, uri, character_slug="aiko", **kwargs
        ).id


def _state(registry: Registry, source_id: int) -> Source:
    with registry.session() as session:
        return session.get(Source, source_id)


def test_url_source_through_yt_dlp(
    registry: Registry, root: DataRoot, http_server: LocalServer
) -> None:
    source_id = _source(registry, "url", http_server.url("clip.mp4"), fps=2.0, max_frames=8)
    logs: list[str] = []
    outcome = ingest_source(registry, root, source_id, logs.append, SMALL_FRAMES)
    assert outcome.state == "done" and outcome.error is None
    assert outcome.video_id == "clip"
    assert outcome.stats.seen == 8 and 4 <= outcome.stats.kept <= 8
    assert any(line.startswith("100%") for line in logs), "download progress is in the log"
    assert logs[-1].startswith(f"source {source_id}: 8 frames seen")
    source = _state(registry, source_id)
    assert (source.state, source.video_id, source.stats["kept"]) == (
        "done",
        "clip",
        outcome.stats.kept,
    )
    with registry.session() as session:
        frames = queries.frames_of_source(session, source_id)
    assert len(frames) == outcome.stats.kept == len(outcome.frame_ids)
    for frame in frames:
        assert root.path(frame.path).is_file()
        assert frame.timestamp_s == pytest.approx(frame.frame_index / 2)
        hash_from_hex(frame.phash)


def test_a_failing_source_does_not_stop_the_others(
    registry: Registry, root: DataRoot, http_server: LocalServer
) -> None:
    missing = _source(registry, "url", http_server.url("gone.mp4"))
    page = _source(registry, "url", http_server.url("page.html"))
    good = _source(registry, "url", http_server.url("clip.mp4"), fps=1.0, max_frames=4)
    outcomes = [
        ingest_source(registry, root, s, lambda _: None, SMALL_FRAMES)
        for s in (missing, page, good)
    ]
    assert [o.state for o in outcomes] == ["failed", "failed", "done"]
    assert "HTTP 404" in _state(registry, missing).error
    assert "not a video page" in _state(registry, page).error
    for source_id in (missing, page):
        assert "\n" not in _state(registry, source_id).error
    assert _state(registry, good).stats["kept"] >= 3


def test_a_done_source_is_not_ingested_again(
    registry: Registry, root: DataRoot, synthetic_video: Path
) -> None:
    upload = store_upload(synthetic_video, root)
    source_id = _source(registry, upload.kind, upload.relpath, fps=2.0, max_frames=8)
    first = ingest_source(registry, root, source_id, lambda _: None, SMALL_FRAMES)
    assert first.stats.kept > 0
    again = ingest_source(registry, root, source_id, lambda _: None, SMALL_FRAMES)
    assert again.already_done and again.stats.seen == 0
    with registry.session() as session:
        assert len(queries.frames_of_source(session, source_id)) == first.stats.kept


def test_truncated_video_fails_with_the_reason(
    registry: Registry, root: DataRoot, synthetic_video: Path
) -> None:
    data = synthetic_video.read_bytes()
    root.write_bytes_atomic("uploads/cut.mp4", data[: len(data) // 2])
    source_id = _source(registry, "video_upload", "uploads/cut.mp4", fps=4.0, max_frames=100)
    outcome = ingest_source(registry, root, source_id, lambda _: None, SMALL_FRAMES)
    assert outcome.state == "failed"
    assert "truncated" in outcome.error or "ffmpeg" in outcome.error
    # Frames before the damage were kept: the failure is reported, the work is not lost.
    source = _state(registry, source_id)
    assert source.state == "failed" and source.stats["kept"] == outcome.stats.kept


@pytest.mark.parametrize(
    ("frames_given", "reason"),
    [
        (3.0, "ffmpeg failed (decoder died at frame 3)"),
        (3.5, "ffmpeg stopped in the middle of a frame"),
    ],
)
def test_an_ffmpeg_dying_mid_stream_fails_the_source_with_whole_frames_only(
    registry: Registry,
    root: DataRoot,
    synthetic_video: Path,
    monkeypatch: pytest.MonkeyPatch,
    frames_given: float,
    reason: str,
) -> None:
    """ffmpeg gives a few frames, then dies: the source fails with the reason, the frames it
    gave whole are registered with their files, and nothing else is."""
    from lora_pipeline.media import video

    real_command = video._extract_command
    frame_bytes = 160 * 120 * 3
    script = (
        f'"$@" 2>/dev/null | head -c {int(frames_given * frame_bytes)}; '
        'echo "decoder died at frame 3" >&2; exit 1'
    )

    def dying(*args: object) -> list[str]:
        return ["/bin/sh", "-c", script, "sh", *real_command(*args)]

    monkeypatch.setattr(video, "_extract_command", dying)
    upload = store_upload(synthetic_video, root)
    source_id = _source(registry, upload.kind, upload.relpath, fps=4.0, max_frames=100)
    options = IngestOptions(filters=FrameFilters.exact_only())
    outcome = ingest_source(registry, root, source_id, lambda _: None, options)
    assert outcome.state == "failed" and reason in outcome.error
    source = _state(registry, source_id)
    assert source.state == "failed" and source.error == outcome.error
    with registry.session() as session:
        rows = queries.frames_of_source(session, source_id)
    assert [row.frame_index for row in rows] == [0, 1, 2]
    assert source.stats["seen"] == source.stats["kept"] == outcome.stats.kept == 3
    for row in rows:
        assert sha256_file(root.path(row.path)) == row.sha256
    assert len(list(root.path("images").rglob("*.png"))) == 3
    assert not list(root.path("images").rglob("*.tmp"))


def test_small_frames_are_dropped_but_a_chosen_small_image_is_kept(
    registry: Registry, root: DataRoot, tmp_path: Path, synthetic_video: Path
) -> None:
    video = store_upload(synthetic_video, root)  # 160x120 frames
    video_source = _source(registry, video.kind, video.relpath, fps=1.0, max_frames=4)
    logs: list[str] = []
    outcome = ingest_source(registry, root, video_source, logs.append)  # default min side 128
    assert outcome.stats.too_small == 4 and outcome.stats.kept == 0
    assert "4 too small" in logs[-1]
    picture = tmp_path / "tiny.png"
    Image.new("RGB", (100, 80), (1, 2, 3)).save(picture)
    upload = store_upload(picture, root)
    image_source = _source(registry, upload.kind, upload.relpath)
    outcome = ingest_source(registry, root, image_source, logs.append)
    assert outcome.state == "done" and outcome.stats.kept == 1


def test_a_registered_filter_is_recorded_and_reported(
    registry: Registry,
    root: DataRoot,
    synthetic_video: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register_even_index_only(monkeypatch)
    video = store_upload(synthetic_video, root)
    source_id = _source(registry, video.kind, video.relpath, fps=2.0, max_frames=8)
    logs: list[str] = []
    outcome = ingest_source(registry, root, source_id, logs.append, SMALL_FRAMES)
    # Eight frames, four with an odd index; the filters before it may drop some first.
    dropped = outcome.stats.odd_index
    assert 1 <= dropped <= 4 and outcome.stats.kept <= 4
    assert _state(registry, source_id).stats["odd_index"] == dropped
    assert f"{dropped} odd index" in logs[-1]
    assert outcome.stats.metadata()["odd_index_dropped"] == dropped


def test_comfyui_file_keeps_its_generation_settings(
    registry: Registry, root: DataRoot, tmp_path: Path
) -> None:
    folder = tmp_path / "comfyui-output"
    write_output(folder, "aiko_00001_.png", _graph())
    source_id = _source(registry, "comfyui_output", "aiko_00001_.png", max_frames=1)
    options = IngestOptions(comfyui_output_dir=folder)
    outcome = ingest_source(registry, root, source_id, lambda _: None, options)
    assert outcome.state == "done" and outcome.stats.kept == 1
    with registry.session() as session:
        (frame,) = queries.frames_of_source(session, source_id)
    assert frame.generation_params["seed"] == 43
    assert frame.generation_params["prompt"] == "a photo of a cat"
    # Without a configured folder the source fails, saying what to set.
    other = _source(registry, "comfyui_output", "aiko_00001_.png", max_frames=1)
    failed = ingest_source(registry, root, other, lambda _: None)
    assert failed.state == "failed" and "LORA_PIPELINE_COMFYUI_OUTPUT_DIR" in failed.error


def test_an_unexpected_error_fails_the_source_in_one_line(
    registry: Registry, root: DataRoot, synthetic_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lora_pipeline.media import ingest

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("width")  # a bug, not a bad file

    upload = store_upload(synthetic_video, root)
    source_id = _source(registry, upload.kind, upload.relpath)
    monkeypatch.setattr(ingest, "store_unique_frames", broken)
    logs: list[str] = []
    outcome = ingest_source(registry, root, source_id, logs.append, SMALL_FRAMES)
    assert outcome.state == "failed" and outcome.error == "KeyError: 'width'"
    assert _state(registry, source_id).error == "KeyError: 'width'"
    assert any("Traceback" in line for line in logs)  # the run's log keeps it for the bug


def test_an_interrupted_run_fails_the_source_and_still_stops(
    registry: Registry, root: DataRoot, synthetic_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lora_pipeline.media import ingest

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    upload = store_upload(synthetic_video, root)
    source_id = _source(registry, upload.kind, upload.relpath)
    monkeypatch.setattr(ingest, "store_unique_frames", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest_source(registry, root, source_id, lambda _: None, SMALL_FRAMES)
    source = _state(registry, source_id)
    assert source.state == "failed" and "interrupted" in source.error


def test_a_source_another_process_ingests_is_left_to_it(
    registry: Registry, root: DataRoot, synthetic_video: Path
) -> None:
    import subprocess
    import sys

    from lora_pipeline.media.claims import is_claimed

    upload = store_upload(synthetic_video, root)
    source_id = _source(registry, upload.kind, upload.relpath)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_CLAIM, str(root.root), str(source_id)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_claimed(root, source_id)
        outcome = ingest_source(registry, root, source_id, lambda _: None, SMALL_FRAMES)
        assert outcome.state == "running" and _state(registry, source_id).state == "pending"
    finally:
        holder.kill()
        holder.wait()
    assert not is_claimed(root, source_id)  # the kernel let go of the dead holder's lock


_HOLD_CLAIM = """
import sys, time
from lora_pipeline.media.claims import claim_source
from lora_pipeline.media.store import DataRoot
with claim_source(DataRoot(sys.argv[1]), int(sys.argv[2])) as claimed:
    print("held" if claimed else "not held", flush=True)
    time.sleep(60)
"""
