"""Turn one ingest request (a registry `Source`) into frames in the data root and registry.

Steps, each one thing: fetch the video (yt-dlp for URLs, the uploaded file otherwise), extract
frames with ffmpeg, drop exact duplicates, store content-addressed PNGs, record a `Frame` row with
provenance. A failing source is marked failed with a one-line reason; it never raises, so the
other sources of the same run go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from lora_pipeline.media.download import DownloadFailed, download_video
from lora_pipeline.media.frames import FrameStats, store_unique_frames
from lora_pipeline.media.images import InvalidImageError, load_image
from lora_pipeline.media.store import DataRoot, UnsafePathError
from lora_pipeline.media.video import VideoError, VideoFrame, extract_frames
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Source, utcnow

Log = Callable[[str], None]


@dataclass
class SourceOutcome:
    source_id: int
    state: str
    error: str | None = None
    stats: FrameStats = field(default_factory=FrameStats)
    video_id: str | None = None


class SourceError(RuntimeError):
    """A source that cannot be ingested; the message is the one line the user sees."""


def ingest_source(registry: Registry, root: DataRoot, source_id: int, log: Log) -> SourceOutcome:
    """Ingest one source; its state ends as done or failed, with the reason."""
    with registry.session() as session:
        source = session.get(Source, source_id)
        if source is None:
            raise SourceError(f"unknown source {source_id}")
        commands.set_source_state(session, source_id, "running", error=None)
        kind, uri, fps, max_frames = source.kind, source.uri, source.fps, source.max_frames
    outcome = SourceOutcome(source_id=source_id, state="done")
    try:
        video_id, frames = _open_frames(root, kind, uri, fps, max_frames, log)
        outcome.video_id = video_id
        with registry.session() as session:
            _record_frames(session, root, source_id, video_id, uri, frames, outcome.stats)
    except (SourceError, DownloadFailed, VideoError, InvalidImageError, UnsafePathError) as exc:
        outcome.state, outcome.error = "failed", str(exc).splitlines()[0]
        log(f"source {source_id} failed: {outcome.error}")
    with registry.session() as session:
        commands.set_source_state(
            session,
            source_id,
            outcome.state,
            error=outcome.error,
            video_id=outcome.video_id,
            stats=vars(outcome.stats).copy(),
            processed_at=utcnow(),
        )
    return outcome


def _open_frames(
    root: DataRoot, kind: str, uri: str, fps: float, max_frames: int, log: Log
) -> tuple[str, Iterator[VideoFrame]]:
    """The video id for provenance and a stream of frames, whatever the kind of source."""
    if kind == "url":
        video = download_video(uri, root.dir("downloads"), progress=log)
        log(f"{'cached' if video.cached else 'downloaded'} {video.extractor}:{video.video_id}")
        return video.video_id, extract_frames(video.path, fps, max_frames)
    if kind == "video_upload":
        path = root.path(uri)
        return path.stem, extract_frames(path, fps, max_frames)
    if kind == "image_upload":
        path = root.path(uri)
        image = load_image(path, name=Path(uri).name)
        return path.stem, iter([VideoFrame(index=0, timestamp_s=0.0, image=image)])
    raise SourceError(f"source kind {kind!r} is not ingested as frames")


def _record_frames(
    session: Session,
    root: DataRoot,
    source_id: int,
    video_id: str,
    uri: str,
    frames: Iterator[VideoFrame],
    stats: FrameStats,
) -> None:
    for frame in store_unique_frames(frames, root, stats):
        commands.add_frame(
            session,
            source_id,
            frame.stored.sha256,
            frame.stored.relpath,
            frame.index,
            frame.timestamp_s,
            frame.stored.width,
            frame.stored.height,
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
