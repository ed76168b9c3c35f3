"""kohya `num_repeats` per shot type that balance the training mix.

The LoRA prep guide recommends close 30–40 %, mid 40–50 % and far 20–30 % of what the model sees.
An epoch shows each image `num_repeats` times, so the share of a shot type is
images × repeats over the total. The repeats chosen are the smallest (1 to MAX_REPEATS) whose
shares fall inside the ranges, or, when none do, those that come closest; ties go to the shares
nearest the middle of their ranges. When a shot type is missing, the others are balanced on
their ranges scaled to fill 100 %. Images of unknown shot type keep the smallest repeat chosen:
they cannot be balanced, and should not outweigh the rest.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

TARGET_SHARES: dict[str, tuple[float, float]] = {
    "close": (0.30, 0.40),
    "mid": (0.40, 0.50),
    "far": (0.20, 0.30),
}
MAX_REPEATS = 10
_PRECISION = 9  # rounding that keeps float noise out of the comparisons


def balance_repeats(counts: Mapping[str, int], max_repeats: int = MAX_REPEATS) -> dict[str, int]:
    """num_repeats for every shot type with images (close, mid, far, unknown)."""
    if max_repeats < 1:
        raise ValueError(f"max_repeats must be at least 1, got {max_repeats}")
    present = [shot for shot in TARGET_SHARES if counts.get(shot, 0) > 0]
    repeats = {shot: 1 for shot in present}
    if len(present) > 1:
        ranges = target_ranges(present)
        candidates = itertools.product(range(1, max_repeats + 1), repeat=len(present))
        best = min(candidates, key=lambda choice: _score(present, counts, ranges, choice))
        repeats = dict(zip(present, best, strict=True))
    if counts.get("unknown", 0) > 0:
        repeats["unknown"] = min(repeats.values(), default=1)
    return repeats


def target_ranges(present: list[str]) -> dict[str, tuple[float, float]]:
    """The guide's ranges, or with a shot type missing, the rest scaled to fill 100 %."""
    if len(present) == len(TARGET_SHARES):
        return {shot: TARGET_SHARES[shot] for shot in present}
    middle = sum(sum(TARGET_SHARES[shot]) / 2 for shot in present)
    return {
        shot: (TARGET_SHARES[shot][0] / middle, TARGET_SHARES[shot][1] / middle) for shot in present
    }


def effective_shares(counts: Mapping[str, int], repeats: Mapping[str, int]) -> dict[str, float]:
    """The share of each shot type in what one epoch shows (4 decimals)."""
    weights = {shot: counts.get(shot, 0) * repeats.get(shot, 0) for shot in repeats}
    total = sum(weights.values())
    return {shot: round(weight / total, 4) if total else 0.0 for shot, weight in weights.items()}


def _score(
    present: list[str],
    counts: Mapping[str, int],
    ranges: Mapping[str, tuple[float, float]],
    choice: tuple[int, ...],
) -> tuple[float, int, float, tuple[int, ...]]:
    weights = [counts[shot] * repeat for shot, repeat in zip(present, choice, strict=True)]
    total = sum(weights)
    outside = middle = 0.0
    for shot, weight in zip(present, weights, strict=True):
        share, (low, high) = weight / total, ranges[shot]
        outside += max(low - share, 0.0, share - high)
        middle += abs(share - (low + high) / 2)
    return (round(outside, _PRECISION), sum(choice), round(middle, _PRECISION), choice)
