"""The face detection interface that shot classification relies on.

Real detectors implement `FaceDetector`: a YOLO-style ONNX model (vision.onnx_faces, the way
anime face detectors ship) or insightface's FaceAnalysis (vision.insightface_faces, an optional
extra); `vision.face_detector_factory.load_face_detector` builds one from a configuration
string. Boxes are in pixel coordinates of the image that was passed in.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from PIL import Image

from lora_pipeline.errors import PipelineError


class FaceDetectionError(PipelineError, ValueError):
    """A detector returned something that is not a usable face box."""


@dataclass(frozen=True)
class FaceBox:
    """A detected face: corners (x1, y1) top-left and (x2, y2) bottom-right, and its score."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float

    def __post_init__(self) -> None:
        values = (self.x1, self.y1, self.x2, self.y2, self.score)
        if not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in values):
            raise FaceDetectionError(f"face box has a non-finite or non-numeric value: {values}")
        # Detectors hand back numpy scalars; plain floats keep areas and JSON output simple.
        for name in ("x1", "y1", "x2", "y2", "score"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise FaceDetectionError(
                f"face box corners are reversed: ({self.x1}, {self.y1}, {self.x2}, {self.y2})"
            )

    @property
    def area(self) -> float:
        return (self.x2 - self.x1) * (self.y2 - self.y1)

    def clipped(self, width: int, height: int) -> FaceBox:
        """The part of the box inside a width × height image (detectors may overshoot)."""
        x1, x2 = (min(max(v, 0.0), float(width)) for v in (self.x1, self.x2))
        y1, y2 = (min(max(v, 0.0), float(height)) for v in (self.y1, self.y2))
        return FaceBox(x1, y1, x2, y2, self.score)


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in an image. `name` identifies the model in metadata files."""

    name: str

    def detect(self, image: Image.Image) -> list[FaceBox]: ...
