"""Face detection through insightface's `FaceAnalysis` (an optional extra: `pip install
'lora_pipeline[faces]'`).

Only the detection module is loaded (`allowed_modules=["detection"]`), from a model folder that
must already be on disk: `<root>/models/<name>/*.onnx` (e.g. the `buffalo_l` pack), or `name`
given as the folder itself. insightface would download a missing pack from GitHub; this wrapper
refuses first, with a message saying where the files must go.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lora_pipeline.vision.faces import FaceBox
from lora_pipeline.vision.onnx_models import ModelLoadError, onnx_providers

DEFAULT_MODEL_NAME = "buffalo_l"
DEFAULT_DET_SIZE = (640, 640)


class InsightFaceUnavailable(ModelLoadError):
    """insightface (or OpenCV, which it needs) is not installed."""


class InsightFaceDetector:
    """The detector of an insightface model pack, behind the FaceDetector interface."""

    def __init__(
        self,
        root: Path | str,
        name: str = DEFAULT_MODEL_NAME,
        *,
        score_threshold: float = 0.5,
        det_size: Sequence[int] = DEFAULT_DET_SIZE,
        device: str = "auto",
    ) -> None:
        face_analysis = _import_face_analysis()
        folder = model_folder(Path(root).expanduser(), name)
        providers = onnx_providers(device)
        try:
            self.app = face_analysis(
                name=str(folder),
                root=str(folder.parent),
                allowed_modules=["detection"],
                providers=providers,
            )
        except AssertionError:
            # FaceAnalysis asserts that one of the files is a detection model.
            raise ModelLoadError(
                f"no face detection model among the .onnx files of {folder}"
            ) from None
        except Exception as error:
            raise ModelLoadError(
                f"cannot load insightface models from {folder}: {error}"
            ) from error
        ctx_id = 0 if providers[0] == "CUDAExecutionProvider" else -1
        self.app.prepare(ctx_id=ctx_id, det_thresh=score_threshold, det_size=tuple(det_size))
        self.name = f"insightface:{folder.name}"

    def detect(self, image: Image.Image) -> list[FaceBox]:
        # insightface works on OpenCV's BGR arrays.
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        return [_face_box(face) for face in self.app.get(bgr)]


def model_folder(root: Path, name: str) -> Path:
    """The folder of .onnx files FaceAnalysis will read; ModelLoadError if there is none."""
    direct = Path(name).expanduser()
    candidates = [direct] if direct.is_absolute() else [root / "models" / name, root / name]
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("*.onnx")):
            return folder.resolve()
    raise ModelLoadError(
        f"no insightface model pack {name!r}: put its .onnx files in {candidates[0]} "
        "(insightface would otherwise try to download it)"
    )


def _import_face_analysis() -> Any:
    try:
        from insightface.app import FaceAnalysis
    except ImportError as error:
        raise InsightFaceUnavailable(
            f"insightface is not installed ({error}): install the faces extra, "
            "`pip install 'lora_pipeline[faces]'`, or use an ONNX face detector"
        ) from None
    return FaceAnalysis


def _face_box(face: Any) -> FaceBox:
    x1, y1, x2, y2 = (float(value) for value in face.bbox[:4])
    return FaceBox(x1, y1, x2, y2, float(face.det_score))
