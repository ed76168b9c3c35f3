"""Ingest steps over a stream of video frames: small generators that compose.

    frames = extract_frames(video, fps=2, max_frames=500)
    for ingested in store_unique_frames(frames, root, stats, FrameFilters()): ...

Each step pulls one frame at a time, so memory stays flat however long the video is. Frames
are judged before they are encoded: a dropped frame costs a 32x32 thumbnail, not a PNG. The
frames kept are encoded, hashed and written by a few threads while the next ones are decoded and
judged (PNG encoding is most of an ingest's time, and PIL, zlib, hashlib and file writes release
the GIL); they come out in stream order, at most a few frames ahead.

The judging is a chain of filters in the style of waifuc's actions: each `FrameFilter` is a
small object over the stream, with a name and its own counters of what it kept and dropped,
and `FRAME_FILTERS` lists them in the order they judge. Adding a filter is one subclass and
one line in that list (plus a `FrameFilters` field when it has a threshold of its own); its
counters reach the source's stats and the ingest metadata under its name.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np

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


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# Threads storing kept frames: one per core the process may use (ffmpeg decodes on the same
# cores), a few at most, since each holds a frame.
STORE_WORKERS = max(1, min(4, _usable_cores()))


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


class Candidate:
    """A frame being judged. Its thumbnail, hash and pixel digest are computed when a filter
    first asks and then shared, so a frame dropped for its size costs no hashing at all."""

    def __init__(self, frame: VideoFrame) -> None:
        self.frame = frame
        self.image = frame.image if frame.image.mode == "RGB" else to_rgb(frame.image)

    @cached_property
    def thumbnail(self) -> np.ndarray:
        return grey_thumbnail(self.image)

    @cached_property
    def phash(self) -> int:
        return hash_of_thumbnail(self.thumbnail)

    @cached_property
    def pixel_digest(self) -> bytes:
        digest = hashlib.sha256(f"{self.image.width}x{self.image.height}:".encode())
        digest.update(self.image.tobytes())
        return digest.digest()


@dataclass
class FilterCounts:
    """What one filter did: frames it let through and frames it dropped."""

    kept: int = 0
    dropped: int = 0


class FrameFilter:
    """One judgement over the stream of frames.

    A subclass sets `name` (its counters' name in the stats and the ingest metadata), builds
    itself from the settings in `from_settings`, says in `keeps` whether a frame passes, and
    notes in `remember` the frames that were kept when it compares with earlier ones.
    """

    name: ClassVar[str]

    @classmethod
    def from_settings(cls, settings: FrameFilters, known: HashIndex) -> FrameFilter | None:
        """The filter the settings ask for, or None when they turn it off. `known` holds the
        hashes of images the stream must not repeat (the character's dataset)."""
        raise NotImplementedError

    def keeps(self, frame: Candidate) -> bool:
        raise NotImplementedError

    def remember(self, frame: Candidate) -> None:
        """Called for each frame that every filter kept (not for one a later filter dropped,
        which must not become the reference the next frames are compared with)."""

    def __call__(self, frames: Iterable[Candidate], counts: FilterCounts) -> Iterator[Candidate]:
        for frame in frames:
            if self.keeps(frame):
                counts.kept += 1
                yield frame
            else:
                counts.dropped += 1


class TooSmall(FrameFilter):
    """Drops a frame whose shorter side is below `min_side` pixels."""

    name = "too_small"

    def __init__(self, min_side: int) -> None:
        self.min_side = min_side

    @classmethod
    def from_settings(cls, settings: FrameFilters, known: HashIndex) -> FrameFilter | None:
        return cls(settings.min_side)

    def keeps(self, frame: Candidate) -> bool:
        return min(frame.image.size) >= self.min_side


class ExactDuplicate(FrameFilter):
    """Drops a frame whose pixels repeat a kept frame of the stream."""

    name = "duplicates"

    def __init__(self) -> None:
        # Pixel digests of the kept frames, by perceptual hash: identical pixels have an
        # identical hash, so only a frame whose hash was kept before can be an exact repeat,
        # and only that frame pays for hashing its pixels (a few ms at 720p).
        self._kept: dict[int, set[bytes]] = {}

    @classmethod
    def from_settings(cls, settings: FrameFilters, known: HashIndex) -> FrameFilter | None:
        return cls()

    def keeps(self, frame: Candidate) -> bool:
        return frame.phash not in self._kept or frame.pixel_digest not in self._kept[frame.phash]

    def remember(self, frame: Candidate) -> None:
        self._kept.setdefault(frame.phash, set()).add(frame.pixel_digest)


class StaticShot(FrameFilter):
    """Drops a frame that differs from the last kept one by less than `threshold` (a shot
    held still)."""

    name = "static"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._last_kept: np.ndarray | None = None

    @classmethod
    def from_settings(cls, settings: FrameFilters, known: HashIndex) -> FrameFilter | None:
        threshold = settings.static_threshold
        return None if threshold is None else cls(threshold)

    def keeps(self, frame: Candidate) -> bool:
        last = self._last_kept
        return last is None or frame_difference(frame.thumbnail, last) >= self.threshold

    def remember(self, frame: Candidate) -> None:
        self._last_kept = frame.thumbnail


class NearDuplicate(FrameFilter):
    """Drops a frame whose perceptual hash is within `max_distance` bits of a kept frame of
    the stream or of a known image; kept frames join the known ones."""

    name = "near_duplicates"

    def __init__(self, max_distance: int, known: HashIndex) -> None:
        self.max_distance = max_distance
        self.known = known

    @classmethod
    def from_settings(cls, settings: FrameFilters, known: HashIndex) -> FrameFilter | None:
        distance = settings.near_duplicate_distance
        return None if distance is None else cls(distance, known)

    def keeps(self, frame: Candidate) -> bool:
        return not self.known.has_near(frame.phash, self.max_distance)

    def remember(self, frame: Candidate) -> None:
        self.known.add(frame.phash)


class Blurry(FrameFilter):
    """Drops a frame whose variance of the Laplacian is below `min_sharpness`."""

    name = "blurry"

    def __init__(self, min_sharpness: float) -> None:
        self.min_sharpness = min_sharpness

    @classmethod
    def from_settings(cls, settings: FrameFilters, known: HashIndex) -> FrameFilter | None:
        minimum = settings.min_sharpness
        return None if minimum is None else cls(minimum)

    def keeps(self, frame: Candidate) -> bool:
        return sharpness(frame.image) >= self.min_sharpness


# The available filters, in the order they judge a frame: the cheapest first, and each frame
# is counted under the first filter that drops it.
FRAME_FILTERS: list[type[FrameFilter]] = [
    TooSmall,
    ExactDuplicate,
    StaticShot,
    NearDuplicate,
    Blurry,
]


def build_filters(settings: FrameFilters, known: HashIndex) -> list[FrameFilter]:
    """The registered filters that the settings turn on, in judging order."""
    built = (filter_class.from_settings(settings, known) for filter_class in FRAME_FILTERS)
    return [frame_filter for frame_filter in built if frame_filter is not None]


def _every_registered_filter() -> dict[str, FilterCounts]:
    # Filters turned off still report zeros: the stats and metadata keys stay the same.
    return {filter_class.name: FilterCounts() for filter_class in FRAME_FILTERS}


@dataclass
class FrameStats:
    """Counters of a stream: frames seen and kept, and each filter's counters by its name.
    Each dropped frame is counted once, under the first filter that dropped it.

    A filter's dropped count also reads as an attribute (`stats.static`), as it did when the
    filters were fixed fields.
    """

    seen: int = 0
    kept: int = 0
    filters: dict[str, FilterCounts] = field(default_factory=_every_registered_filter)

    def __getattr__(self, name: str) -> int:
        # Only reached for names that are not real attributes; __dict__ guards against copy
        # and pickle asking before __init__ has run.
        counts = self.__dict__.get("filters", {}).get(name)
        if counts is None:
            raise AttributeError(f"{type(self).__name__} has no filter or field {name!r}")
        return counts.dropped

    def counts(self, name: str) -> FilterCounts:
        return self.filters.setdefault(name, FilterCounts())

    def add(self, other: FrameStats) -> None:
        self.seen += other.seen
        self.kept += other.kept
        for name, counts in other.filters.items():
            mine = self.counts(name)
            mine.kept += counts.kept
            mine.dropped += counts.dropped

    def dropped(self) -> dict[str, int]:
        """Frames dropped, by filter name, in judging order."""
        return {name: counts.dropped for name, counts in self.filters.items()}

    def as_dict(self) -> dict[str, int]:
        """The shape a source's stats are recorded in: seen, kept and dropped per filter."""
        return {"seen": self.seen, "kept": self.kept, **self.dropped()}

    def metadata(self) -> dict[str, object]:
        """The ingest metadata: frames seen and kept, `<filter>_dropped` for each filter, and
        every filter's counters together under `frame_filters`."""
        return {
            "frames_seen": self.seen,
            "frames_kept": self.kept,
            **{f"{name}_dropped": count for name, count in self.dropped().items()},
            "frame_filters": {name: vars(counts).copy() for name, counts in self.filters.items()},
        }


def store_unique_frames(
    frames: Iterable[VideoFrame],
    root: DataRoot,
    stats: FrameStats,
    filters: FrameFilters | None = None,
    known: HashIndex | None = None,
    workers: int = STORE_WORKERS,
) -> Iterator[IngestedFrame]:
    """Store each frame that passes the filters in the data root and yield it, in stream order.

    `known` holds the perceptual hashes of images the frames must not repeat (the character's
    dataset); the near-duplicate filter adds the kept frames to it. A frame already in the root
    from an earlier run is still yielded: it is new to this stream. `workers` threads store
    frames while the stream goes on. When the stream fails part way (a truncated video), the
    frames it gave before are still stored and yielded, then its error is raised.
    """
    chain = build_filters(filters or FrameFilters(), known if known is not None else HashIndex())
    stream: Iterator[Candidate] = _candidates(frames, stats)
    for frame_filter in chain:
        stream = frame_filter(stream, stats.counts(frame_filter.name))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store-frame") as pool:
        pending: deque[tuple[VideoFrame, int, Future[StoredImage]]] = deque()
        try:
            while True:
                try:
                    candidate = next(stream)
                except StopIteration:
                    break
                except Exception:
                    # The frames decoded before the damage are kept, as they were taken.
                    while pending:
                        yield _stored(pending.popleft(), stats)
                    raise
                for frame_filter in chain:
                    frame_filter.remember(candidate)
                stored = pool.submit(root.put_image, candidate.image)
                pending.append((candidate.frame, candidate.phash, stored))
                # A few frames ahead keep every thread busy; more would only hold memory.
                if len(pending) > workers + 1:
                    yield _stored(pending.popleft(), stats)
            while pending:
                yield _stored(pending.popleft(), stats)
        finally:
            # Closed early or failed storing: frames not started are not written at all.
            pool.shutdown(cancel_futures=True)


def _stored(entry: tuple[VideoFrame, int, Future[StoredImage]], stats: FrameStats) -> IngestedFrame:
    frame, phash, future = entry
    stored = future.result()
    stats.kept += 1
    return IngestedFrame(frame.index, frame.timestamp_s, stored, phash)


def _candidates(frames: Iterable[VideoFrame], stats: FrameStats) -> Iterator[Candidate]:
    for frame in frames:
        stats.seen += 1
        yield Candidate(frame)
