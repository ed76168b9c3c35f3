"""Perceptual hashes, frame differences and sharpness: the cheap measures that dedupe frames.

All three start from small greyscale copies of the frame, so a 1080p frame costs about a
millisecond; nothing here is encoded or written.

- `perceptual_hash`: the 64-bit DCT hash of `imagehash.phash` (32x32 greyscale, 2-D DCT, the 8x8
  lowest frequencies against their median). Re-encodes, small crops, subtitles and noise move a
  few bits; another shot moves about half of them. A Hamming distance up to ~8 is "the same
  picture" (`DEFAULT_NEAR_DUPLICATE_DISTANCE`).
- `frame_difference`: mean absolute difference of 32x32 thumbnails, 0 (identical) to 1. A held
  or static shot stays near 0 whatever its content.
- `sharpness`: variance of the Laplacian at a fixed working size; low means blurry.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

import numpy as np
from PIL import Image

from lora_pipeline.errors import PipelineError

HASH_SIZE = 8
_DCT_SIZE = HASH_SIZE * 4
DEFAULT_NEAR_DUPLICATE_DISTANCE = 8
# Sharpness is measured at this longer side, so one threshold fits every source resolution.
SHARPNESS_SIDE = 512
_HEX_HASH = re.compile(r"[0-9a-f]{16}")


class InvalidHashError(PipelineError, ValueError):
    """A stored perceptual hash that is not 16 hexadecimal digits."""


@functools.cache
def _dct_matrix(size: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: `M @ x` is the DCT of the column vector x."""
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    matrix = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * np.sqrt(2 / size)
    matrix[0] /= np.sqrt(2)
    return matrix


def grey_thumbnail(image: Image.Image, size: int = _DCT_SIZE) -> np.ndarray:
    """A size x size float32 greyscale copy (box-filtered, so every pixel counts)."""
    grey = image if image.mode == "L" else image.convert("L")
    return np.asarray(grey.resize((size, size), Image.Resampling.BOX), dtype=np.float32)


def hash_of_thumbnail(thumbnail: np.ndarray) -> int:
    """The 64-bit perceptual hash of a 32x32 greyscale thumbnail."""
    if thumbnail.shape != (_DCT_SIZE, _DCT_SIZE):
        raise ValueError(f"expected a {_DCT_SIZE}x{_DCT_SIZE} thumbnail, got {thumbnail.shape}")
    matrix = _dct_matrix(_DCT_SIZE)
    low = (matrix @ thumbnail.astype(np.float64) @ matrix.T)[:HASH_SIZE, :HASH_SIZE]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def perceptual_hash(image: Image.Image) -> int:
    return hash_of_thumbnail(grey_thumbnail(image))


def hash_to_hex(value: int) -> str:
    return f"{value:016x}"


def hash_from_hex(text: str) -> int:
    if not isinstance(text, str) or not _HEX_HASH.fullmatch(text):
        raise InvalidHashError(f"invalid perceptual hash {text!r}: expected 16 hex digits")
    return int(text, 16)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def frame_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two greyscale thumbnails of one size, from 0 to 1."""
    return float(np.mean(np.abs(a - b)) / 255.0)


def sharpness(image: Image.Image) -> float:
    """Variance of the 4-neighbour Laplacian of the greyscale image at SHARPNESS_SIDE."""
    grey = image if image.mode == "L" else image.convert("L")
    scale = SHARPNESS_SIDE / max(grey.size)
    if scale < 1:
        size = (max(3, round(grey.width * scale)), max(3, round(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.BOX)
    pixels = np.asarray(grey, dtype=np.float32)
    if min(pixels.shape) < 3:
        return 0.0
    laplacian = (
        pixels[:-2, 1:-1] + pixels[2:, 1:-1] + pixels[1:-1, :-2] + pixels[1:-1, 2:]
    ) - 4 * pixels[1:-1, 1:-1]
    return float(laplacian.var())


class HashIndex:
    """A growing set of 64-bit hashes answering "is any of them within distance d?".

    A linear scan over a numpy array: 100,000 hashes take well under a millisecond per query,
    more than a character's whole dataset.
    """

    def __init__(self, hashes: Iterable[int] = ()) -> None:
        self._hashes = np.fromiter((h & (2**64 - 1) for h in hashes), dtype=np.uint64)
        self._size = len(self._hashes)

    def __len__(self) -> int:
        return self._size

    def add(self, value: int) -> None:
        if self._size == len(self._hashes):
            grown = np.zeros(max(16, 2 * self._size), dtype=np.uint64)
            grown[: self._size] = self._hashes[: self._size]
            self._hashes = grown
        self._hashes[self._size] = np.uint64(value)
        self._size += 1

    def nearest(self, value: int) -> int | None:
        """The smallest Hamming distance to a stored hash; None when empty."""
        if not self._size:
            return None
        xor = np.bitwise_xor(self._hashes[: self._size], np.uint64(value))
        return int(np.bitwise_count(xor).min())

    def has_near(self, value: int, max_distance: int) -> bool:
        nearest = self.nearest(value)
        return nearest is not None and nearest <= max_distance
