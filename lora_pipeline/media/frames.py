"""Ingest steps over a stream of video frames: small generators that compose.

    frames = extract_frames(video, fps=2, max_frames=500)
    for ingested in store_unique_frames(frames, root, stats, FrameFilters()): ...

Each step pulls one frame at a time, so memory stays flat however long the video is. Frames
are judged before they are encoded: a dropped frame costs a 32x32 thumbnail, not a PNG.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lora_pipeline.media.images import to_rgb
from lora_pipeline.media.phash import (
    DEFAULT_NEAR_DUPLICATE_DISTANCE,
    HashIndex,
    frame_difference,
    grey_thumbnail,
    hash_of_thumbnail,
    sharpness,
)
from lora_pipeline.media.store import DataRoot, StoredImage
from lora_pipeline.media.video import VideoFrame

# Mean absolute difference (0-1) of 32x32 thumbnails below which a frame is the same shot held
# still: compression noise of a static shot measures about 0.001, a cut 0.2 or more.
DEFAULT_STATIC_THRESHOLD = 0.01
# Smaller frames make poor training images (SD1.5 trains at 512).
DEFAULT_MIN_SIDE = 128


@dataclass(frozen=True)
class FrameFilters:
    """Which frames are worth keeping. A threshold of None turns that filter off.

    static_threshold: drop a frame that differs from the last kept one by less than this.
    near_duplicate_distance: drop a frame whose perceptual hash is within this many bits of a
        kept frame of the stream or of a known image (the character's dataset).
    min_sharpness: drop a frame whose variance of the Laplacian is below this (blurry).
    min_side: drop a frame whose shorter side is below this many pixels.
    """

    static_threshold: float | None = DEFAULT_STATIC_THRESHOLD
    near_duplicate_distance: int | None = DEFAULT_NEAR_DUPLICATE_DISTANCE
    min_sharpness: float | None = None
    min_side: int = DEFAULT_MIN_SIDE

    def __post_init__(self) -> None:
        if self.static_threshold is not None and not 0 <= self.static_threshold <= 1:
            raise ValueError(f"static_threshold must be within 0-1, not {self.static_threshold}")
        distance = self.near_duplicate_distance
        if distance is not None and not 0 <= distance <= 64:
            raise ValueError(f"near_duplicate_distance must be within 0-64 bits, not {distance}")
        if self.min_sharpness is not None and self.min_sharpness < 0:
            raise ValueError(f"min_sharpness must not be negative, not {self.min_sharpness}")
        if self.min_side < 1:
            raise ValueError(f"min_side must be at least 1 pixel, not {self.min_side}")

    @classmethod
    def exact_only(cls) -> FrameFilters:
        """Drop exact duplicates only: every distinct frame is kept."""
        return cls(None, None, None, 1)


@dataclass
class IngestedFrame:
    index: int
    timestamp_s: float
    stored: StoredImage
    phash: int


@dataclass
class FrameStats:
    """Counters a step updates as the stream passes through it; each dropped frame is counted
    once, under the first filter that dropped it."""

    seen: int = 0
    kept: int = 0
    duplicates: int = 0
    static: int = 0
    near_duplicates: int = 0
    blurry: int = 0
    too_small: int = 0

    def add(self, other: FrameStats) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


def store_unique_frames(
    frames: Iterable[VideoFrame],
    root: DataRoot,
    stats: FrameStats,
    filters: FrameFilters | None = None,
    known: HashIndex | None = None,
) -> Iterator[IngestedFrame]:
    """Store each frame that passes the filters in the data root and yield it.

    `known` holds the perceptual hashes of images the frames must not repeat (the character's
    dataset); kept frames are added to it. A frame already in the root from an earlier run is
    still yielded: it is new to this stream.
    """
    filters = filters or FrameFilters()
    index = known if known is not None else HashIndex()
    # Pixel digests of the kept frames, by perceptual hash: identical pixels have an identical
    # hash, so only a frame whose hash was kept before can be an exact repeat, and only that
    # frame pays for hashing its pixels (a few ms at 720p).
    kept_pixels: dict[int, set[bytes]] = {}
    last_kept: np.ndarray | None = None
    for frame in frames:
        stats.seen += 1
        image = frame.image if frame.image.mode == "RGB" else to_rgb(frame.image)
        if min(image.size) < filters.min_side:
            stats.too_small += 1
            continue
        thumbnail = grey_thumbnail(image)
        phash = hash_of_thumbnail(thumbnail)
        if phash in kept_pixels and _pixel_digest(image) in kept_pixels[phash]:
            stats.duplicates += 1
            continue
        reason = _drop_reason(image, thumbnail, phash, last_kept, index, filters)
        if reason:
            setattr(stats, reason, getattr(stats, reason) + 1)
            continue
        kept_pixels.setdefault(phash, set()).add(_pixel_digest(image))
        index.add(phash)
        last_kept = thumbnail
        stored = root.put_image(image)
        stats.kept += 1
        yield IngestedFrame(frame.index, frame.timestamp_s, stored, phash)


def _drop_reason(
    image: Image.Image,
    thumbnail: np.ndarray,
    phash: int,
    last_kept: np.ndarray | None,
    index: HashIndex,
    filters: FrameFilters,
) -> str | None:
    """The FrameStats counter of the filter that drops this frame, or None to keep it."""
    if (
        filters.static_threshold is not None
        and last_kept is not None
        and frame_difference(thumbnail, last_kept) < filters.static_threshold
    ):
        return "static"
    distance = filters.near_duplicate_distance
    if distance is not None and index.has_near(phash, distance):
        return "near_duplicates"
    if filters.min_sharpness is not None and sharpness(image) < filters.min_sharpness:
        return "blurry"
    return None


def _pixel_digest(image: Image.Image) -> bytes:
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.digest()
