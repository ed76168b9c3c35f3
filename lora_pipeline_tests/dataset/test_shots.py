"""Shot classification thresholds: close > 25 %, mid 8–25 %, far < 8 %, unknown without a face."""

from __future__ import annotations

import numpy as np
import pytest

from lora_pipeline.dataset.shots import (
    CLOSE_MIN,
    MID_MIN,
    SHOT_TYPES,
    ShotResult,
    classify_shot,
)
from lora_pipeline.dataset.versions import DatasetError
from lora_pipeline.vision.faces import FaceBox, FaceDetectionError


def box(width: float, height: float, score: float = 0.9, x: float = 10, y: float = 5) -> FaceBox:
    return FaceBox(x, y, x + width, y + height, score)


def test_constants() -> None:
    assert SHOT_TYPES == ("close", "mid", "far", "unknown")
    assert (CLOSE_MIN, MID_MIN) == (0.25, 0.08)


@pytest.mark.parametrize(
    ("face", "shot", "ratio"),
    [
        (box(50, 50), "mid", 0.25),  # exactly 25 % is not yet a close-up
        (box(50, 50.02), "close", 0.2501),
        (box(80, 80), "close", 0.64),
        (box(40, 20), "mid", 0.08),  # exactly 8 % is already mid
        (box(40, 19.98), "far", 0.0799),
        (box(10, 10), "far", 0.01),
    ],
)
def test_thresholds_at_the_boundaries(face: FaceBox, shot: str, ratio: float) -> None:
    result = classify_shot(100, 100, [face])
    assert result.shot_type == shot
    assert result.face_ratio == ratio
    assert result.confidence == 0.9


def test_no_face_is_unknown() -> None:
    assert classify_shot(100, 100, []) == ShotResult("unknown", None, None, None)


def test_face_outside_the_image_is_ignored() -> None:
    outside = FaceBox(120, 120, 150, 150, 0.99)
    assert classify_shot(100, 100, [outside]).shot_type == "unknown"


def test_largest_face_decides_and_bbox_is_clipped_to_ints() -> None:
    small = FaceBox(1.2, 1.6, 11.4, 11.5, 0.99)
    large = FaceBox(-20.4, 30.2, 60.6, 170.0, 0.51)  # overshoots left and bottom
    result = classify_shot(200, 100, [small, large])
    assert result.face_bbox == [0, 30, 61, 100]
    assert result.confidence == 0.51
    assert result.face_ratio == round(60.6 * 69.8 / 20000, 4)
    assert result.shot_type == "mid"


def test_equal_areas_prefer_the_confident_face_whatever_the_order() -> None:
    a = FaceBox(0, 0, 30, 30, 0.4)
    b = FaceBox(50, 50, 80, 80, 0.8)
    assert classify_shot(100, 100, [a, b]) == classify_shot(100, 100, [b, a])
    assert classify_shot(100, 100, [a, b]).face_bbox == [50, 50, 80, 80]


def test_bad_image_size() -> None:
    with pytest.raises(DatasetError, match="positive"):
        classify_shot(0, 100, [])


def test_face_box_validation_and_numpy_values() -> None:
    face = FaceBox(*np.array([1, 2, 11, 7, 0.5], dtype=np.float32))
    assert type(face.x2) is float and face.area == 50.0
    with pytest.raises(FaceDetectionError, match="reversed"):
        FaceBox(10, 0, 5, 5, 0.9)
    with pytest.raises(FaceDetectionError, match="non-finite"):
        FaceBox(0, 0, float("nan"), 5, 0.9)
    with pytest.raises(FaceDetectionError, match="non-numeric"):
        FaceBox(0, 0, "5", 5, 0.9)  # type: ignore[arg-type]
