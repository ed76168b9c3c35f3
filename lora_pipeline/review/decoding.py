"""Bounded image decoding in the review app: a pixel budget shared by every full decode
(uploaded images, thumbnails), and thumbnails made once and kept in the data root.

A decode needs memory in proportion to its pixels (4 bytes each: a 7900x7900 upload takes about
250 MB while it is checked and stored), so the app lets through at once only as many pixels as
the budget allows; the others wait their turn. The pixel count is read from the file's header
(PIL's open is lazy), before anything is decoded; an image over the pixel limit is refused by
`media.images` without a decode and needs no budget.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from lora_pipeline.files import atomic_path
from lora_pipeline.media.images import MAX_IMAGE_PIXELS, InvalidImageError, load_image
from lora_pipeline.media.store import DataRoot

THUMBS_DIR = "thumbs"
THUMB_SIDE = 1024
THUMB_QUALITY = 90
# Pillow keeps a decoded image in blocks of this size (16 MB by default). glibc serves blocks
# under 32 MB (its largest dynamic mmap threshold) from per-thread arenas and keeps them when
# they are freed, so big decodes run one after another on different server threads each left
# their 250 MB behind: six 7900x7900 uploads took the app to 1.2 GB. Blocks over 32 MB are
# mapped and unmapped, so their memory goes back to the system when the image is dropped.
PIXEL_BLOCK_BYTES = 64 * 1024**2


def return_freed_pixels() -> None:
    """Make the memory of a dropped big image go back to the system (see PIXEL_BLOCK_BYTES);
    a setting of this whole process, made by the app that decodes uploads."""
    Image.core.set_block_size(max(Image.core.get_block_size(), PIXEL_BLOCK_BYTES))


class PixelBudget:
    """At most `pixels` pixels decoded at once across threads; one larger image still runs,
    alone, so nothing waits for ever."""

    def __init__(self, pixels: int) -> None:
        self.pixels = max(1, pixels)
        self._in_use = 0
        self._changed = threading.Condition()

    @contextmanager
    def decoding(self, pixels: int) -> Iterator[None]:
        wanted = min(max(1, pixels), self.pixels)
        with self._changed:
            self._changed.wait_for(lambda: self._in_use + wanted <= self.pixels)
            self._in_use += wanted
        try:
            yield
        finally:
            with self._changed:
                self._in_use -= wanted
                self._changed.notify_all()


def header_pixels(path: Path) -> int | None:
    """Width x height from the image header (nothing decoded); None for a file that is not a
    readable image or one over the pixel limit (refused before any decode)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception:  # not an image, or a damaged header: the checks that follow say why
            return None
    pixels = width * height
    return pixels if 0 < pixels <= MAX_IMAGE_PIXELS else None


class Thumbnails:
    """`<data root>/thumbs/ab/<sha256>-1024.jpg`: made at the first request, under the budget,
    and served from disk after that."""

    def __init__(self, root: DataRoot, budget: PixelBudget) -> None:
        self.root = root
        self.budget = budget
        self._guard = threading.Lock()
        self._making: dict[str, threading.Lock] = {}

    def path(self, source: Path, sha256: str) -> Path:
        """The thumbnail of the image file `source` (content address `sha256`)."""
        relpath = f"{THUMBS_DIR}/{sha256[:2]}/{sha256}-{THUMB_SIDE}.jpg"
        target = self.root.path(relpath)
        if target.is_file():
            return target
        try:
            with self._lock_for(relpath):
                if not target.is_file():  # another request may have made it meanwhile
                    self._make(source, target)
        finally:
            with self._guard:  # a later request finds the file; the lock is not needed
                self._making.pop(relpath, None)
        return target

    def _lock_for(self, relpath: str) -> threading.Lock:
        with self._guard:
            return self._making.setdefault(relpath, threading.Lock())

    def _make(self, source: Path, target: Path) -> None:
        pixels = header_pixels(source)
        if pixels is None:
            raise InvalidImageError(f"{source.name}: not a readable image")
        with self.budget.decoding(pixels):
            image = load_image(source, name=source.name)
            image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
        with atomic_path(target) as temporary:
            image.save(temporary, format="JPEG", quality=THUMB_QUALITY)
