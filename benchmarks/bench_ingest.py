"""Ingest of a 5-minute 720p video at 2 fps against bare ffmpeg extracting the same frames.

Baseline: `ffmpeg -i video -vf fps=2 -f image2 out/%05d.png`: decode, sample and write every
frame as a PNG, nothing else. ffmpeg's PNG encoder runs at its defaults: zlib level 6 with the
paeth filter on every row. Headline: `ingest_source` of the same video as an uploaded video with
every frame kept (every filter off but exact duplicates, which content addressing would store
once anyway), so it decodes, samples and writes the same frames, plus what an ingest adds
(registry rows, provenance, content-addressed PNGs through atomic writes, perceptual hashes).
The ingest's PNGs are the project's own writer's (images.encode_png): zlib level 6
(images.PNG_COMPRESS_LEVEL) with the "up" filter on every row. The default filters' ingest is
an extra figure. Each round starts from an empty data root and registry; the rounds alternate
and the medians are kept. CPU seconds (ffmpeg's and this process's threads) are given too: on a
shared machine they vary less than the wall clock. The generated video is cached under /tmp
(it takes minutes).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

from benchmarks.run import Result
from lora_pipeline.media.frames import STORE_WORKERS, FrameFilters
from lora_pipeline.media.images import PNG_COMPRESS_LEVEL
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


def _cpu_s() -> float:
    """CPU seconds of this process (all its threads) and of its finished children (ffmpeg)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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


def _ingest(
    video: Path, scratch: Path, filters: FrameFilters
) -> tuple[float, float, SourceOutcome]:
    """Seconds and CPU seconds of ingest_source alone (setup and the upload copy are not
    timed)."""
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
        cpu = _cpu_s()
        seconds, outcome = _timed(
            lambda: ingest_source(registry, root, source_id, lambda _: None, options)
        )
        cpu = _cpu_s() - cpu
        assert isinstance(outcome, SourceOutcome) and outcome.state == "done", outcome
        return seconds, cpu, outcome
    finally:
        registry.dispose()


def _load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def run() -> Result:
    video = _video()
    wall: dict[str, list[float]] = {"bare": [], "every": [], "default": []}
    cpu: dict[str, list[float]] = {"bare": [], "every": [], "default": []}
    load_before = _load()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        outcome_default = outcome_every = None
        frames_baseline = 0
        for _ in range(ROUNDS):
            spent = _cpu_s()
            seconds, frames_baseline = _timed(lambda: _bare_ffmpeg(video, scratch))
            wall["bare"].append(seconds)
            cpu["bare"].append(_cpu_s() - spent)
            seconds, spent, outcome_every = _ingest(video, scratch, FrameFilters.exact_only())
            wall["every"].append(seconds)
            cpu["every"].append(spent)
            seconds, spent, outcome_default = _ingest(video, scratch, FrameFilters())
            wall["default"].append(seconds)
            cpu["default"].append(spent)
    assert outcome_default is not None and outcome_every is not None
    walls = {name: median(values) for name, values in wall.items()}
    cpus = {name: median(values) for name, values in cpu.items()}
    stats = outcome_default.stats
    return Result(
        name="ingest of a 5-min 720p video at 2 fps, every frame kept (uploaded video → frames "
        "in the registry)",
        measured_s=walls["every"],
        baseline_s=walls["bare"],
        baseline="bare ffmpeg fps=2 → PNG files",
        figures={
            "video": f"{SECONDS} s {WIDTH}x{HEIGHT} 24 fps, {SCENES} scenes",
            "rounds": ROUNDS,
            "load_average_before": load_before,
            "load_average_after": _load(),
            "png_ffmpeg": "ffmpeg png encoder defaults: zlib level 6, paeth filter",
            "png_ingest": f"images.encode_png: zlib level {PNG_COMPRESS_LEVEL}, up filter",
            "store_threads": STORE_WORKERS,
            "frames_sampled": stats.seen,
            "frames_written_by_ffmpeg": int(frames_baseline),
            "frames_kept_every_frame_run": outcome_every.stats.kept,
            "exact_duplicates_every_frame_run": outcome_every.stats.duplicates,
            "bare_ffmpeg_s": round(walls["bare"], 2),
            "ingest_every_frame_kept_s": round(walls["every"], 2),
            "bare_ffmpeg_cpu_s": round(cpus["bare"], 2),
            "ingest_every_frame_kept_cpu_s": round(cpus["every"], 2),
            "cpu_ratio_every_frame_kept": round(cpus["every"] / cpus["bare"], 2),
            "ingest_default_filters_s": round(walls["default"], 2),
            "ingest_default_filters_cpu_s": round(cpus["default"], 2),
            "ratio_default_filters": round(walls["default"] / walls["bare"], 2),
            "kept_default_filters": stats.kept,
            "dropped_static": stats.static,
            "dropped_near_duplicates": stats.near_duplicates,
            "dropped_exact_duplicates": stats.duplicates,
            "rounds_s": "; ".join(
                f"{name} " + ", ".join(f"{value:.1f}" for value in values)
                for name, values in wall.items()
            ),
        },
    )
