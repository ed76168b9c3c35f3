"""The face detector a configuration string names.

Kept apart from `vision.faces` because the detectors it builds import that interface; a factory
beside them keeps the imports one-way. Neither detector module imports its runtime (onnxruntime,
insightface) before a detector is built, so importing this costs nothing.
"""

from __future__ import annotations

from lora_pipeline.vision.faces import FaceDetectionError, FaceDetector
from lora_pipeline.vision.insightface_faces import DEFAULT_MODEL_NAME, InsightFaceDetector
from lora_pipeline.vision.onnx_faces import OnnxFaceDetector

INSIGHTFACE_PREFIX = "insightface:"


def load_face_detector(
    spec: str, *, score_threshold: float = 0.5, device: str = "auto"
) -> FaceDetector:
    """The detector a configuration string names.

    - `path/to/model.onnx`: a YOLO-style ONNX face detector (see `vision.onnx_faces`);
    - `insightface:<root>` or `insightface:<root>#<pack name>`: insightface's FaceAnalysis with
      the detection model of `<root>/models/<pack>` (`buffalo_l` unless named).
    """
    text = spec.strip() if isinstance(spec, str) else ""
    if text.startswith(INSIGHTFACE_PREFIX):
        root, _, name = text[len(INSIGHTFACE_PREFIX) :].partition("#")
        if not root:
            raise FaceDetectionError(f"face detector {spec!r} names no insightface model root")
        return InsightFaceDetector(
            root, name or DEFAULT_MODEL_NAME, score_threshold=score_threshold, device=device
        )
    if text.lower().endswith(".onnx"):
        return OnnxFaceDetector(text, score_threshold=score_threshold, device=device)
    raise FaceDetectionError(
        f"face detector {spec!r} is neither a .onnx file nor 'insightface:<model root>'"
    )


def load_yolo_detector(
    path: str,
    what: str,
    *,
    score_threshold: float = 0.5,
    device: str = "auto",
    layout: str = "auto",
) -> FaceDetector:
    """A YOLO-style ONNX person or head detector (same I/O as the face one, vision.onnx_faces,
    whose `layout` says how to read an output with fewer candidates than values); its boxes
    come back through the face detector interface."""
    text = path.strip() if isinstance(path, str) else ""
    if not text.lower().endswith(".onnx"):
        raise FaceDetectionError(f"{what} {path!r} is not a .onnx file")
    return OnnxFaceDetector(
        text, score_threshold=score_threshold, device=device, what=what, layout=layout
    )
