"""Ingest under hostile input and faults, through the CLI and Dagster as a user meets them: a
playlist upload, a refused upload, a full disk, a decompression bomb among ComfyUI outputs, and
kill -9 of an ingest process followed by the schedule's sweep and a retry."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance
from sqlalchemy import func, select

from lora_pipeline.cli import main
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource
from lora_pipeline.defs.schedules import sweep_stuck_jobs_job
from lora_pipeline.media.video import make_synthetic_video
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Frame, Source
from lora_pipeline_tests.media.test_comfyui_outputs import _graph, write_output
from lora_pipeline_tests.media.test_uploads import _bomb_png


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _env(home: Path) -> dict[str, str]:
    return {
        "LORA_PIPELINE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        # Every sampled frame is kept, so a run records many before it is killed.
        "LORA_PIPELINE_NEAR_DUPLICATE_DISTANCE": "-1",
        "LORA_PIPELINE_STATIC_THRESHOLD": "-1",
        "LORA_PIPELINE_MIN_SIDE": "16",
    }


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Path:
    home = tmp_path / "home"
    for name in ("DATABASE_URL", "DATA_ROOT", "IDENTIFIER", "COMFYUI_OUTPUT_DIR", "BASE_MODEL"):
        monkeypatch.delenv(f"LORA_PIPELINE_{name}", raising=False)
    for name, value in _env(home).items():
        monkeypatch.setenv(name, value)
    assert run(capsys, "init")[0] == 0
    assert run(capsys, "project", "add", "demo")[0] == 0
    assert run(capsys, "character", "add", "aiko", "--project", "demo")[0] == 0
    return home


def _registry(home: Path) -> Registry:
    return Registry(f"sqlite:///{home / 'registry.db'}")


def _data_files(home: Path) -> list[Path]:
    root = home / "data"
    return sorted(p for p in root.rglob("*") if p.is_file() and "locks" not in p.parts)


def test_a_playlist_upload_is_refused_in_one_line(home: Path, capsys, tmp_path: Path) -> None:
    secret = make_synthetic_video(tmp_path / "private" / "elsewhere.mp4", 1.0, 64, 48, scenes=1)
    playlist = tmp_path / "clip.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXTINF:1,\n{secret}\n#EXT-X-ENDLIST\n")
    before = _data_files(home)
    code, out, err = run(capsys, "ingest", str(playlist), "--character", "aiko")
    assert code == 2 and err.count("\n") == 1 and "playlist or manifest" in err
    assert _data_files(home) == before
    with _registry(home).session() as session:
        assert session.scalar(select(func.count(Source.id))) == 0


def test_a_refused_upload_leaves_nothing_in_the_data_root(
    home: Path, capsys, tmp_path: Path
) -> None:
    video = make_synthetic_video(tmp_path / "clip.mp4", 1.0, 64, 48, scenes=1)
    code, _, err = run(capsys, "ingest", str(video), "--character", "aiko", "--fps", "500")
    assert code == 2 and "fps" in err and err.count("\n") == 1
    assert not any(p.suffix == ".mp4" for p in _data_files(home))


def test_a_full_disk_is_one_line_on_upload_and_during_extraction(
    home: Path, capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lora_pipeline.media import store, uploads

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    video = make_synthetic_video(tmp_path / "clip.mp4", 2.0, 64, 48, scenes=2)
    with monkeypatch.context() as patch:
        patch.setattr(uploads.shutil, "copyfile", full)
        code, _, err = run(capsys, "ingest", str(video), "--character", "aiko")
    assert (
        code == 2 and err == "error: clip.mp4: the disk is full (free some space and try again)\n"
    )

    monkeypatch.setattr(store, "atomic_write_bytes", full)  # every frame PNG write fails
    code, out, err = run(capsys, "ingest", str(video), "--character", "aiko", "--now")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in out + err
    assert err == "error: ingest 1 failed: the disk is full (free some space and try again)\n"
    with _registry(home).session() as session:
        source = session.get(Source, 1)
        assert source.state == "failed"
        assert source.error == "the disk is full (free some space and try again)"


def test_a_bomb_among_comfyui_outputs_fails_that_file_only(
    home: Path, capsys, tmp_path: Path
) -> None:
    folder = tmp_path / "output"
    write_output(folder, "aiko_00001_.png", _graph())
    bomb = folder / "aiko_00002_.png"
    bomb.write_bytes(_bomb_png(60_000))
    os.utime(bomb, (time.time() - 60, time.time() - 60))
    write_output(folder, "aiko_00003_.png")
    code, out, err = run(capsys, "ingest", "--comfyui-output", "--folder", str(folder), "--now")
    assert "3 new ComfyUI outputs to ingest" in out
    assert code == 2 and err.count("\n") == 1 and "too large" in err
    with _registry(home).session() as session:
        states = {s.uri: (s.state, s.error) for s in session.scalars(select(Source))}
    assert states["aiko_00001_.png"] == ("done", None)
    assert states["aiko_00003_.png"] == ("done", None)
    assert states["aiko_00002_.png"][0] == "failed" and "too large" in states["aiko_00002_.png"][1]


def _frames(registry: Registry, source_id: int) -> tuple[int, int]:
    with registry.session() as session:
        rows = session.execute(
            select(func.count(Frame.id), func.count(func.distinct(Frame.frame_index))).where(
                Frame.source_id == source_id
            )
        ).one()
    return int(rows[0]), int(rows[1])


def _sweep(home: Path) -> None:
    resources = {
        "registry": RegistryResource(database_url=f"sqlite:///{home / 'registry.db'}"),
        "data_root": DataRootResource(path=str(home / "data")),
        "models": ModelsResource(),
    }
    with DagsterInstance.ephemeral() as instance:
        assert sweep_stuck_jobs_job.execute_in_process(
            resources=resources, instance=instance
        ).success


def test_kill_9_mid_ingest_then_sweep_and_retry(home: Path, capsys, tmp_path: Path) -> None:
    video = make_synthetic_video(tmp_path / "long.mp4", 60.0, 96, 64, fps=10, scenes=6)
    assert (
        run(
            capsys,
            "ingest",
            str(video),
            "--character",
            "aiko",
            "--fps",
            "10",
            "--max-frames",
            "600",
        )[0]
        == 0
    )
    registry = _registry(home)
    env = {**os.environ, **_env(home)}
    process = subprocess.Popen(
        [sys.executable, "-c", _INGEST_ONE, str(home)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _frames(registry, 1)[0] < 32:
            assert process.poll() is None, "the ingest ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    with registry.session() as session:
        assert session.get(Source, 1).state == "running"
    recorded, distinct = _frames(registry, 1)
    assert 32 <= recorded < 600 and recorded == distinct

    _sweep(home)
    with registry.session() as session:
        source = session.get(Source, 1)
        assert source.state == "failed" and "died mid-way" in source.error
        assert "\n" not in source.error

    code, out, err = run(capsys, "ingest", "retry", "1", "--now")
    assert code == 0, err
    assert "ingest 1 is pending again" in out and "ingest 1: done" in out
    after = _frames(registry, 1)
    assert after[0] == after[1] and after[0] > recorded
    # The same as an uninterrupted ingest of the same video.
    code, out, err = run(
        capsys,
        "ingest",
        str(video),
        "--character",
        "aiko",
        "--fps",
        "10",
        "--max-frames",
        "600",
        "--now",
    )
    assert code == 0, err
    assert _frames(registry, 2) == after
    # A second sweep leaves the finished source alone.
    _sweep(home)
    with registry.session() as session:
        assert session.get(Source, 1).state == "done"
    registry.dispose()


# The ingest of source 1 in its own process, as the sensor's run would do it.
_INGEST_ONE = """
import sys
from pathlib import Path
from lora_pipeline.config import Settings
from lora_pipeline.defs.ingest import frame_filters, IngestConfig
from lora_pipeline.media.ingest import IngestOptions, ingest_source
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry.db import Registry

settings = Settings.current()
options = IngestOptions(filters=frame_filters(settings, IngestConfig()), run_id="killed-run-0001")
ingest_source(Registry(settings.database_url), DataRoot(settings.data_root), 1, print, options)
"""


def test_the_sweep_leaves_a_source_a_live_process_is_ingesting(home: Path, capsys) -> None:
    from lora_pipeline.media.claims import claim_source
    from lora_pipeline.media.store import DataRoot
    from lora_pipeline.registry import commands

    registry = _registry(home)
    with registry.session() as session:
        source = commands.create_source(session, "demo", "url", "https://example.com/v", "aiko")
        commands.set_source_state(session, source.id, "running", run_id="live-run")
        source_id = source.id
    with claim_source(DataRoot(home / "data"), source_id) as claimed:
        assert claimed
        _sweep(home)
        with registry.session() as session:
            assert session.get(Source, source_id).state == "running"
    _sweep(home)
    with registry.session() as session:
        assert session.get(Source, source_id).state == "failed"
    code, out, _ = run(capsys, "ingest", "retry", str(source_id))
    assert code == 0 and f"ingest {source_id} is pending again" in out
    with registry.session() as session:
        row = session.get(Source, source_id)
        assert (row.state, row.error, row.run_id) == ("pending", None, None)
    registry.dispose()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ingest", "retry"], "give the id of the failed source"),
        (["ingest", "retry", "abc"], "source id must be a whole number"),
        (["ingest", "retry", str(2**64)], "source id must be between 1 and"),
        (["ingest", "retry", "99"], "unknown source 99"),
    ],
)
def test_bad_retry_arguments(home: Path, capsys, argv: list[str], message: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and message in err


def test_the_reason_names_a_run_that_ended(home: Path) -> None:
    from lora_pipeline.defs.schedules import dead_ingest_reason

    resources = {
        "registry": RegistryResource(database_url=f"sqlite:///{home / 'registry.db'}"),
        "data_root": DataRootResource(path=str(home / "data")),
        "models": ModelsResource(),
    }
    with DagsterInstance.ephemeral() as instance:
        result = sweep_stuck_jobs_job.execute_in_process(resources=resources, instance=instance)
        reason = dead_ingest_reason(instance, result.run_id)
        assert reason == f"its ingest run {result.run_id[:8]} ended (success) mid-way"
        assert "no Dagster run" in dead_ingest_reason(instance, None)


def test_an_upper_case_url_is_a_url_and_its_password_is_not_kept(home: Path, capsys) -> None:
    code, out, err = run(
        capsys, "ingest", "HTTPS://me:hunter2@Example.com/watch?v=1", "--character", "aiko"
    )
    assert code == 0, err
    assert "ingest request 1 created (url, single mode)" in out
    with _registry(home).session() as session:
        assert session.get(Source, 1).uri == "https://Example.com/watch?v=1"


def test_the_ingest_sensor_runs_a_retried_source_again(home: Path, capsys) -> None:
    from dagster import build_sensor_context

    from lora_pipeline.defs.sensors import ingest_sensor
    from lora_pipeline.registry import commands

    registry = _registry(home)
    with registry.session() as session:
        source = commands.create_source(session, "demo", "url", "https://example.com/v", "aiko")
        source_id = source.id
    resources = {"registry": RegistryResource(database_url=registry.url)}
    with DagsterInstance.ephemeral() as instance:
        first = ingest_sensor(build_sensor_context(instance=instance, resources=resources))
        assert [r.run_key for r in first.run_requests] == [f"ingest-{source_id}"]
        with registry.session() as session:
            commands.set_source_state(session, source_id, "failed", error="HTTP 500")
        later = build_sensor_context(instance=instance, cursor=first.cursor, resources=resources)
        assert ingest_sensor(later).run_requests == []
        assert run(capsys, "ingest", "retry", str(source_id))[0] == 0
        later = build_sensor_context(instance=instance, cursor=first.cursor, resources=resources)
        retried = ingest_sensor(later).run_requests
    assert len(retried) == 1 and retried[0].run_key.startswith(f"ingest-{source_id}-retry-")
    assert retried[0].run_config["ops"]["ingested_frames"]["config"]["source_ids"] == [source_id]
    registry.dispose()
