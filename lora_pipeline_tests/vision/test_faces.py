"""The face box type and the detector protocol."""

from __future__ import annotations

from PIL import Image

from lora_pipeline.vision.faces import FaceBox, FaceDetector


def test_area_and_clipping() -> None:
    face = FaceBox(-10, 20, 30, 120, 0.7)
    assert face.area == 4000
    clipped = face.clipped(100, 100)
    assert clipped == FaceBox(0, 20, 30, 100, 0.7)
    assert clipped.area == 2400
    assert FaceBox(150, 150, 160, 160, 0.5).clipped(100, 100).area == 0


def test_detector_protocol_is_structural() -> None:
    class Detector:
        name = "boxes"

        def detect(self, image: Image.Image) -> list[FaceBox]:
            return [FaceBox(0, 0, *image.size, 1.0)]

    class NotADetector:
        name = "nothing"

    assert isinstance(Detector(), FaceDetector)
    assert not isinstance(NotADetector(), FaceDetector)
