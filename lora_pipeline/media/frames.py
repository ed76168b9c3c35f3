"""Ingest steps over a stream of video frames: small generators that compose.

    frames = extract_frames(video, fps=2, max_frames=500)
    for ingested in store_unique_frames(frames, root, stats): ...

Each step pulls one frame at a time, so memory stays flat however long the video is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from PIL import Image

from lora_pipeline.media.images import to_rgb
from lora_pipeline.media.store import DataRoot, StoredImage
from lora_pipeline.media.video import VideoFrame


@dataclass
class IngestedFrame:
    index: int
    timestamp_s: float
    stored: StoredImage


@dataclass
class FrameStats:
    """Counters a step updates as the stream passes through it."""

    seen: int = 0
    kept: int = 0
    duplicates: int = 0


def store_unique_frames(
    frames: Iterable[VideoFrame], root: DataRoot, stats: FrameStats
) -> Iterator[IngestedFrame]:
    """Store each frame whose content is new to this stream in the data root and yield it.

    Still shots and held frames decode to identical pixels; they are stored once and counted
    as duplicates. A frame already in the root from an earlier run is still yielded: it is
    new to this video.
    """
    seen_pixels: set[bytes] = set()
    for frame in frames:
        stats.seen += 1
        # Identical pixels give an identical PNG, so hashing the raw pixels finds duplicates
        # without paying for a PNG encode of each repeat.
        key = _pixel_digest(frame.image)
        if key in seen_pixels:
            stats.duplicates += 1
            continue
        seen_pixels.add(key)
        stored = root.put_image(frame.image)
        stats.kept += 1
        yield IngestedFrame(index=frame.index, timestamp_s=frame.timestamp_s, stored=stored)


def _pixel_digest(image: Image.Image) -> bytes:
    rgb = image if image.mode == "RGB" else to_rgb(image)
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.digest()
