"""num_repeats per shot type towards close 30–40 %, mid 40–50 %, far 20–30 %."""

from __future__ import annotations

import pytest

from lora_pipeline.dataset.balance import (
    TARGET_SHARES,
    balance_repeats,
    effective_shares,
    target_ranges,
)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        # Already balanced: nothing repeats.
        ({"close": 7, "mid": 9, "far": 4}, {"close": 1, "mid": 1, "far": 1}),
        # 10/10/10 is 33 % each: mid and close twice gives 40/40/20.
        ({"close": 10, "mid": 10, "far": 10}, {"close": 2, "mid": 2, "far": 1}),
        # Too many close-ups: mid and far catch up.
        ({"close": 20, "mid": 10, "far": 5}, {"close": 1, "mid": 2, "far": 2}),
        ({"close": 3, "mid": 3, "far": 1}, {"close": 2, "mid": 2, "far": 3}),
        # No far shots: close and mid share 100 % in the ratio of their ranges.
        ({"close": 4, "mid": 4, "far": 0}, {"close": 1, "mid": 1}),
        ({"close": 1, "mid": 9}, {"close": 6, "mid": 1}),
        ({"mid": 5}, {"mid": 1}),
        ({"unknown": 3}, {"unknown": 1}),
        ({}, {}),
        # Unknown shots cannot be balanced: they keep the smallest repeat.
        (
            {"close": 10, "mid": 10, "far": 10, "unknown": 4},
            {"close": 2, "mid": 2, "far": 1, "unknown": 1},
        ),
    ],
)
def test_balance_repeats(counts: dict[str, int], expected: dict[str, int]) -> None:
    assert balance_repeats(counts) == expected


@pytest.mark.parametrize(
    "counts",
    [
        {"close": 12, "mid": 30, "far": 3},
        {"close": 40, "mid": 5, "far": 9},
        {"close": 2, "mid": 17, "far": 11},
        {"close": 25, "mid": 25, "far": 25},
    ],
)
def test_shares_land_in_the_recommended_ranges(counts: dict[str, int]) -> None:
    shares = effective_shares(counts, balance_repeats(counts))
    for shot, (low, high) in TARGET_SHARES.items():
        assert low - 1e-9 <= shares[shot] <= high + 1e-9, (shot, shares)


def test_out_of_reach_balance_comes_as_close_as_the_repeat_limit_allows() -> None:
    counts = {"close": 1, "mid": 60, "far": 1}
    repeats = balance_repeats(counts, max_repeats=10)
    assert repeats == {"close": 10, "mid": 1, "far": 10}
    with pytest.raises(ValueError, match="at least 1"):
        balance_repeats(counts, max_repeats=0)


def test_target_ranges_scale_when_a_shot_type_is_missing() -> None:
    assert target_ranges(["close", "mid", "far"]) == TARGET_SHARES
    scaled = target_ranges(["mid", "far"])
    assert scaled["mid"] == pytest.approx((0.40 / 0.70, 0.50 / 0.70))
    assert scaled["far"] == pytest.approx((0.20 / 0.70, 0.30 / 0.70))


def test_effective_shares() -> None:
    assert effective_shares({"close": 3, "mid": 3, "far": 1}, {"close": 2, "mid": 2, "far": 3}) == {
        "close": 0.4,
        "mid": 0.4,
        "far": 0.2,
    }
    assert effective_shares({}, {}) == {}
