"""Near-duplicate images inside a dataset: a perceptual hash plus a colour thumbnail.

The perceptual hash is media.phash's 64-bit DCT hash (the one ingest dedupes frames with): it
survives re-encoding, resizing and small edits, but sees structure only, so two flat images of
different colours hash alike. A 4 × 4 colour thumbnail tells those apart. Two images are
near-duplicates when both are close.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lora_pipeline.media.phash import DEFAULT_NEAR_DUPLICATE_DISTANCE, perceptual_hash

COLOUR_SIDE = 4
MAX_HASH_DISTANCE = DEFAULT_NEAR_DUPLICATE_DISTANCE  # of 64 bits
MAX_COLOUR_DELTA = 16.0  # mean absolute difference of the colour thumbnails, 0–255


@dataclass(frozen=True)
class Fingerprint:
    phash: int
    colour: bytes  # COLOUR_SIDE² RGB pixels


@dataclass(frozen=True)
class NearDuplicate:
    first: int  # indices into the fingerprints given
    second: int
    hash_distance: int


def fingerprint(image: Image.Image) -> Fingerprint:
    colour = image.convert("RGB").resize((COLOUR_SIDE, COLOUR_SIDE), Image.BOX)
    return Fingerprint(perceptual_hash(image), colour.tobytes())


def near_duplicates(
    prints: Sequence[Fingerprint],
    max_hash_distance: int = MAX_HASH_DISTANCE,
    max_colour_delta: float = MAX_COLOUR_DELTA,
) -> list[NearDuplicate]:
    """Every pair (i < j) of near-duplicates, in index order."""
    if len(prints) < 2:
        return []
    hashes = np.array([p.phash for p in prints], dtype=np.uint64)
    distances = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    first, second = np.nonzero(np.triu(distances <= max_hash_distance, k=1))
    if first.size == 0:
        return []
    colours = np.array([np.frombuffer(p.colour, dtype=np.uint8) for p in prints], dtype=np.int16)
    deltas = np.abs(colours[first] - colours[second]).mean(axis=1)
    return [
        NearDuplicate(int(i), int(j), int(distances[i, j]))
        for i, j, delta in zip(first, second, deltas, strict=True)
        if delta <= max_colour_delta
    ]


def duplicate_groups(count: int, pairs: Sequence[NearDuplicate]) -> list[list[int]]:
    """Connected groups of near-duplicates (each sorted, groups by first index)."""
    parent = list(range(count))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for pair in pairs:
        a, b = root(pair.first), root(pair.second)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for index in range(count):
        groups.setdefault(root(index), []).append(index)
    return sorted((members for members in groups.values() if len(members) > 1), key=min)
