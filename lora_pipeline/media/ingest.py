"""Turn one ingest request (a registry `Source`) into frames in the data root and registry.

Steps, each one thing: fetch the pictures (yt-dlp for URLs, the uploaded file, a file of the
ComfyUI output folder), extract frames with ffmpeg, drop what is not worth keeping (exact
duplicates, a static shot's repeats, near-duplicates of this stream or of the character's
dataset, blurry or tiny frames), store content-addressed PNGs, record a `Frame` row with
provenance. A failing source is marked failed with a one-line reason, whatever went wrong (a
bad file, a full disk, a bug); it never raises, so the other sources of the same run go on.
A source already done is not ingested again. A source records the run that took it, so one
left `running` by a run that died (kill -9, lost worker) is found and failed later.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from lora_pipeline.errors import DISK_FULL, PipelineError, disk_full, first_line, user_message
from lora_pipeline.media.claims import claim_source
from lora_pipeline.media.comfyui_outputs import output_path, read_generation_params
from lora_pipeline.media.download import DEFAULT_STALL_S, download_video
from lora_pipeline.media.frames import FrameFilters, FrameStats, IngestedFrame, store_unique_frames
from lora_pipeline.media.images import InvalidImageError, load_image
from lora_pipeline.media.phash import HashIndex, hash_from_hex, hash_to_hex, perceptual_hash
from lora_pipeline.media.store import DataRoot, UnsafePathError
from lora_pipeline.media.video import VideoFrame, extract_frames
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Source, utcnow

Log = Callable[[str], None]
# Frames are committed in small transactions: a long video never holds the registry's write
# lock for long, and a crash keeps what was recorded (re-running finds those frames again).
FRAMES_PER_COMMIT = 16
PROGRESS_EVERY_S = 15.0
# Sources whose frames are sampled from a video; the other kinds are one chosen picture.
VIDEO_KINDS = ("url", "video_upload")
DEFAULT_MAX_HEIGHT = 1080


@dataclass(frozen=True)
class IngestOptions:
    filters: FrameFilters = field(default_factory=FrameFilters)
    # Where `comfyui_output` sources' files are; None refuses such sources.
    comfyui_output_dir: Path | None = None
    # Tallest video format downloaded from a URL.
    max_height: int = DEFAULT_MAX_HEIGHT
    # A download with no data for this long fails (Settings.download_stall_s).
    stall_s: float = DEFAULT_STALL_S
    # The Dagster run ingesting, recorded on each source it takes.
    run_id: str | None = None


@dataclass
class SourceOutcome:
    source_id: int
    state: str
    error: str | None = None
    stats: FrameStats = field(default_factory=FrameStats)
    video_id: str | None = None
    # True when the source was already done and nothing was ingested this time.
    already_done: bool = False
    frame_ids: list[int] = field(default_factory=list)


class SourceError(PipelineError, RuntimeError):
    """A source that cannot be ingested; the message is the one line the user sees."""


@dataclass
class _Opened:
    """What a source yields: an id for provenance, frames, and settings the source records."""

    video_id: str
    frames: Iterator[VideoFrame]
    generation_params: dict[str, Any] | None = None


def ingest_source(
    registry: Registry,
    root: DataRoot,
    source_id: int,
    log: Log,
    options: IngestOptions | None = None,
) -> SourceOutcome:
    """Ingest one source; its state ends as done or failed, with the reason."""
    options = options or IngestOptions()
    with claim_source(root, source_id) as claimed:
        if not claimed:
            log(f"source {source_id} is being ingested by another run; left to it")
            return SourceOutcome(source_id, "running")
        return _ingest_claimed(registry, root, source_id, log, options)


def _ingest_claimed(
    registry: Registry, root: DataRoot, source_id: int, log: Log, options: IngestOptions
) -> SourceOutcome:
    with registry.session() as session:
        source = session.get(Source, source_id)
        if source is None:
            raise SourceError(f"unknown source {source_id}")
        if source.state == "done":
            log(f"source {source_id} was already ingested; nothing to do")
            return SourceOutcome(source_id, "done", video_id=source.video_id, already_done=True)
        commands.set_source_state(
            session, source_id, "running", error=None, run_id=options.run_id, started_at=utcnow()
        )
    outcome = SourceOutcome(source_id=source_id, state="done")
    try:
        _ingest(registry, root, source_id, log, options, outcome)
    except BaseException as exc:
        # Anything at all: the source must not stay `running`. An interrupt still stops the run.
        outcome.state, outcome.error = "failed", _reason(exc)
        log(f"source {source_id} failed: {outcome.error}")
        if not isinstance(exc, PipelineError):
            log("".join(traceback.format_exception(exc, limit=-8)))
        if not isinstance(exc, Exception):
            _finish(registry, source_id, outcome)
            raise
    _finish(registry, source_id, outcome)
    _log_summary(source_id, outcome, log)
    return outcome


def _ingest(
    registry: Registry,
    root: DataRoot,
    source_id: int,
    log: Log,
    options: IngestOptions,
    outcome: SourceOutcome,
) -> None:
    with registry.session() as session:
        source = session.get(Source, source_id)
        assert source is not None  # checked by the caller
        kind, uri, fps, max_frames = source.kind, source.uri, source.fps, source.max_frames
        known = _known_hashes(session, root, source, log)
    opened = _open_frames(root, kind, uri, fps, max_frames, log, options)
    outcome.video_id = opened.video_id
    filters = options.filters if kind in VIDEO_KINDS else _chosen_picture(options.filters)
    frames = store_unique_frames(opened.frames, root, outcome.stats, filters, known)
    _record_frames(registry, source_id, frames, opened, outcome, log)


def _reason(exc: BaseException) -> str:
    """The one line a failed source shows: the error's own, a full disk, or an interruption."""
    if disk_full(exc):
        return DISK_FULL
    if not isinstance(exc, Exception):
        return f"the run was interrupted ({type(exc).__name__})"
    return first_line(exc) if isinstance(exc, PipelineError) else user_message(exc)


def _finish(registry: Registry, source_id: int, outcome: SourceOutcome) -> None:
    with registry.session() as session:
        commands.set_source_state(
            session,
            source_id,
            outcome.state,
            error=outcome.error,
            video_id=outcome.video_id,
            stats=outcome.stats.as_dict(),
            processed_at=utcnow(),
        )


def _chosen_picture(filters: FrameFilters) -> FrameFilters:
    """An image someone chose (an upload, a ComfyUI output) is not judged on size or blur as
    sampled frames are; the reviewer decides. Repeating the dataset still counts."""
    return replace(filters, min_side=1, min_sharpness=None)


def _known_hashes(session: Session, root: DataRoot, source: Source, log: Log) -> HashIndex:
    """Single mode: the character's dataset, which new frames must not repeat. Project mode
    learns the characters only when frames are classified, which checks there."""
    if source.mode != "single" or source.character_id is None:
        return HashIndex()
    return dataset_hash_index(session, root, source.character_id, log)


def dataset_hash_index(session: Session, root: DataRoot, character_id: int, log: Log) -> HashIndex:
    """Perceptual hashes of every image of a character; images stored without one (generated
    before hashes existed, or by another stage) get theirs computed from the file once."""
    index = HashIndex()
    for image_id, phash, path in queries.image_hashes(session, character_id):
        if phash is None:
            try:
                phash = hash_to_hex(perceptual_hash(load_image(root.path(path))))
            except (InvalidImageError, UnsafePathError) as exc:
                log(f"image {image_id} has no readable file, left out of dedupe: {exc}")
                continue
            commands.set_image_phash(session, image_id, phash)
        index.add(hash_from_hex(phash))
    return index


def _open_frames(
    root: DataRoot,
    kind: str,
    uri: str,
    fps: float,
    max_frames: int,
    log: Log,
    options: IngestOptions,
) -> _Opened:
    """The video id for provenance and a stream of frames, whatever the kind of source."""
    if kind == "url":
        video = download_video(
            uri,
            root.dir("downloads"),
            progress=log,
            max_height=options.max_height,
            stall_s=options.stall_s,
        )
        log(f"{'cached' if video.cached else 'downloaded'} {video.extractor}:{video.video_id}")
        return _Opened(video.video_id, extract_frames(video.path, fps, max_frames))
    if kind == "video_upload":
        path = root.path(uri)
        return _Opened(path.stem, extract_frames(path, fps, max_frames))
    if kind == "image_upload":
        path = root.path(uri)
        return _Opened(path.stem, _single_image(path, Path(uri).name))
    if kind == "comfyui_output":
        if options.comfyui_output_dir is None:
            raise SourceError(
                "no ComfyUI output folder is configured (LORA_PIPELINE_COMFYUI_OUTPUT_DIR)"
            )
        path = output_path(options.comfyui_output_dir, uri)
        params = read_generation_params(path)
        return _Opened(Path(uri).stem, _single_image(path, uri), generation_params=params)
    raise SourceError(f"source kind {kind!r} is not ingested as frames")


def _single_image(path: Path, name: str) -> Iterator[VideoFrame]:
    image = load_image(path, name=name)  # fails here, at the call, when the file is bad
    return iter([VideoFrame(index=0, timestamp_s=0.0, image=image)])


def _record_frames(
    registry: Registry,
    source_id: int,
    frames: Iterator[IngestedFrame],
    opened: _Opened,
    outcome: SourceOutcome,
    log: Log,
) -> None:
    """Record the frames FRAMES_PER_COMMIT to a transaction. When the stream fails part way,
    the frames it gave (each one stored before it is given) are recorded before the error goes
    on, so the source's kept count is the frames it has."""
    last_report = time.monotonic()
    batch: list[IngestedFrame] = []
    try:
        for frame in frames:
            batch.append(frame)
            if len(batch) < FRAMES_PER_COMMIT:
                continue
            full, batch = batch, []
            _add_frames(registry, source_id, full, opened, outcome)
            if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                last_report = time.monotonic()
                stats = outcome.stats
                log(f"source {source_id}: {stats.seen} frames seen, {stats.kept} kept so far")
    except Exception:
        _add_frames(registry, source_id, batch, opened, outcome)
        raise
    _add_frames(registry, source_id, batch, opened, outcome)


def _add_frames(
    registry: Registry,
    source_id: int,
    frames: list[IngestedFrame],
    opened: _Opened,
    outcome: SourceOutcome,
) -> None:
    if not frames:
        return
    with registry.session() as session:
        for frame in frames:
            row, _ = commands.add_frame(
                session,
                source_id,
                frame.stored.sha256,
                frame.stored.relpath,
                frame.index,
                frame.timestamp_s,
                frame.stored.width,
                frame.stored.height,
                phash=hash_to_hex(frame.phash),
                generation_params=opened.generation_params,
            )
            outcome.frame_ids.append(row.id)


def _log_summary(source_id: int, outcome: SourceOutcome, log: Log) -> None:
    if outcome.state != "done":
        return
    stats = outcome.stats
    dropped = {name: value for name, value in stats.dropped().items() if value}
    detail = ", ".join(f"{value} {name.replace('_', ' ')}" for name, value in dropped.items())
    log(
        f"source {source_id}: {stats.seen} frames seen, {stats.kept} kept"
        + (f" (dropped: {detail})" if detail else "")
    )


def frame_provenance(source: Source, frame_index: int, timestamp_s: float) -> dict[str, object]:
    """What a reviewer needs to find the frame again: source, video id, time, index."""
    return {
        "source_id": source.id,
        "source_kind": source.kind,
        "source_uri": source.uri,
        "video_id": source.video_id,
        "timestamp_s": round(timestamp_s, 3),
        "frame_index": frame_index,
    }
