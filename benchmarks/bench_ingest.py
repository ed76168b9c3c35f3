"""Ingest of a 5-minute 720p video at 2 fps against bare ffmpeg extracting the same frames.

Baseline: `ffmpeg -i video -vf fps=2 -f image2 out/%05d.png`: decode, sample and write every
frame as a PNG, nothing else. Measured: `ingest_source` of the same video as an uploaded video
(registry rows, provenance, content-addressed PNGs, exact/static/near-duplicate filters), with
the default filters and with every filter off but exact duplicates (so it writes as many PNGs as
the baseline does). Each round starts from an empty data root and registry; the rounds
alternate and the medians are kept. The generated video is cached under /tmp (it takes minutes).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

from benchmarks.run import Result
from lora_pipeline.media.frames import FrameFilters
from lora_pipeline.media.ingest import IngestOptions, SourceOutcome, ingest_source
from lora_pipeline.media.store import DataRoot
from lora_pipeline.media.uploads import store_upload
from lora_pipeline.media.video import ffmpeg_exe, make_synthetic_video
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate

VIDEO = Path(tempfile.gettempdir()) / "lora_pipeline_bench" / "ingest_720p_300s.mp4"
SECONDS, WIDTH, HEIGHT, SCENES = 300, 1280, 720, 60
FPS = 2.0
MAX_FRAMES = 100_000
ROUNDS = 3


def _video() -> Path:
    if not VIDEO.is_file():
        make_synthetic_video(VIDEO, SECONDS, width=WIDTH, height=HEIGHT, fps=24, scenes=SCENES)
    return VIDEO


def _timed(action: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = action()
    return time.perf_counter() - start, value


def _bare_ffmpeg(video: Path, scratch: Path) -> int:
    out = scratch / "ffmpeg"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(video)]
        + ["-vf", f"fps={FPS:g}", "-f", "image2", str(out / "%05d.png")],
        check=True,
    )
    return len(list(out.iterdir()))


def _ingest(video: Path, scratch: Path, filters: FrameFilters) -> tuple[float, SourceOutcome]:
    """Seconds of ingest_source alone (setup and the upload copy are not timed)."""
    home = scratch / "ingest"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    url = f"sqlite:///{home / 'registry.db'}"
    migrate(url)
    registry = Registry(url)
    try:
        root = DataRoot(home / "data")
        with registry.session() as session:
            commands.add_project(session, "bench", "Bench")
            commands.add_character(session, "bench", "aiko", "Aiko")
        # The upload is copied outside the timing: only the ingest itself is measured.
        upload = store_upload(video, root)
        with registry.session() as session:
            source_id = commands.create_source(
                session,
                "bench",
                upload.kind,
                upload.relpath,
                character_slug="aiko",
                fps=FPS,
                max_frames=MAX_FRAMES,
            ).id
        options = IngestOptions(filters=filters)
        seconds, outcome = _timed(
            lambda: ingest_source(registry, root, source_id, lambda _: None, options)
        )
        assert isinstance(outcome, SourceOutcome) and outcome.state == "done", outcome
        return seconds, outcome
    finally:
        registry.dispose()


def run() -> Result:
    video = _video()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        bare, dedupe, every = [], [], []
        outcome_default = outcome_exact = None
        frames_baseline = 0
        for _ in range(ROUNDS):
            seconds, frames_baseline = _timed(lambda: _bare_ffmpeg(video, scratch))
            bare.append(seconds)
            seconds, outcome_default = _ingest(video, scratch, FrameFilters())
            dedupe.append(seconds)
            seconds, outcome_exact = _ingest(video, scratch, FrameFilters.exact_only())
            every.append(seconds)
    assert outcome_default is not None and outcome_exact is not None
    baseline, measured, all_frames = median(bare), median(dedupe), median(every)
    stats = outcome_default.stats
    return Result(
        name="ingest of a 5-min 720p video at 2 fps (uploaded video → frames in the registry)",
        measured_s=measured,
        baseline_s=baseline,
        baseline="bare ffmpeg fps=2 → PNG files",
        figures={
            "video": f"{SECONDS} s {WIDTH}x{HEIGHT} 24 fps, {SCENES} scenes",
            "rounds": ROUNDS,
            "frames_sampled": stats.seen,
            "frames_written_by_ffmpeg": int(frames_baseline),
            "kept_default_filters": stats.kept,
            "dropped_static": stats.static,
            "dropped_near_duplicates": stats.near_duplicates,
            "dropped_exact_duplicates": stats.duplicates,
            "ingest_default_filters_s": round(measured, 2),
            "ingest_every_frame_kept_s": round(all_frames, 2),
            "frames_kept_every_frame_run": outcome_exact.stats.kept,
            "ratio_every_frame_kept": round(all_frames / baseline, 2),
            "bare_ffmpeg_s": round(baseline, 2),
        },
    )
