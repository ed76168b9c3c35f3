"""Shot classification: close / mid / far from the largest face's share of the image.

Thresholds follow the LoRA prep guide: a face over 25 % of the image is a close-up, 8–25 % a
mid shot (upper body), under 8 % a far shot (full body); no face at all is `unknown`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lora_pipeline.dataset.versions import DatasetError
from lora_pipeline.vision.faces import FaceBox

SHOT_TYPES = ("close", "mid", "far", "unknown")
CLOSE_MIN = 0.25
MID_MIN = 0.08
# Ratios and scores land in JSON files; a fixed precision keeps reruns byte-identical.
_DECIMALS = 4


@dataclass(frozen=True)
class ShotResult:
    shot_type: str
    face_ratio: float | None
    confidence: float | None
    face_bbox: list[int] | None


def shot_type_for_ratio(face_ratio: float) -> str:
    """close above CLOSE_MIN, mid from MID_MIN up to CLOSE_MIN inclusive, far below MID_MIN."""
    if face_ratio > CLOSE_MIN:
        return "close"
    if face_ratio >= MID_MIN:
        return "mid"
    return "far"


def classify_shot(width: int, height: int, faces: Sequence[FaceBox]) -> ShotResult:
    """Classify by the largest face (clipped to the image); no visible face → unknown."""
    if width <= 0 or height <= 0:
        raise DatasetError(f"image size must be positive, got {width}x{height}")
    visible = [face.clipped(width, height) for face in faces]
    visible = [face for face in visible if face.area > 0]
    if not visible:
        return ShotResult("unknown", None, None, None)
    # On equal areas the more confident detection wins, so the result does not depend on order.
    largest = max(visible, key=lambda face: (face.area, face.score))
    ratio = largest.area / float(width * height)
    return ShotResult(
        shot_type=shot_type_for_ratio(ratio),
        face_ratio=round(ratio, _DECIMALS),
        confidence=round(float(largest.score), _DECIMALS),
        face_bbox=[round(largest.x1), round(largest.y1), round(largest.x2), round(largest.y2)],
    )
