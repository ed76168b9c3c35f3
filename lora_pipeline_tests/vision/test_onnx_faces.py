"""The YOLO-style ONNX face detector, run by the real onnxruntime on a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

from lora_pipeline.vision.face_detector_factory import load_face_detector
from lora_pipeline.vision.faces import FaceBox, FaceDetectionError, FaceDetector
from lora_pipeline.vision.onnx_faces import OnnxFaceDetector, non_max_suppression
from lora_pipeline.vision.onnx_models import ModelLoadError
from lora_pipeline.vision.tiny_onnx import build_tiny_face_detector


def block_image(
    size: tuple[int, int], box: tuple[int, int, int, int], grey: int = 0
) -> Image.Image:
    image = Image.new("RGB", size, (grey, grey, grey))
    image.paste((255, 255, 255), box)
    return image


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sizes = {(1, 1): (40.0, 40.0)}
    path = tmp_path_factory.mktemp("faces") / "faces.onnx"
    return build_tiny_face_detector(path, 64, lambda r, c: sizes.get((r, c), (16.0, 16.0)))


def test_finds_exactly_the_planted_face(model: Path) -> None:
    detector = OnnxFaceDetector(model)
    assert isinstance(detector, FaceDetector)
    assert detector.name == "onnx:faces.onnx"
    assert detector.detect(block_image((64, 64), (32, 48, 48, 64))) == [
        FaceBox(32.0, 48.0, 48.0, 64.0, 1.0)
    ]
    # The cell with a bigger box: centred on the cell, 40 x 40.
    assert detector.detect(block_image((64, 64), (16, 16, 32, 32))) == [
        FaceBox(4.0, 4.0, 44.0, 44.0, 1.0)
    ]
    assert detector.detect(Image.new("RGB", (64, 64))) == []


def test_letterbox_maps_boxes_back_to_the_image(model: Path) -> None:
    detector = OnnxFaceDetector(model)
    # 128 x 96 is scaled by 1/2 to 64 x 48 and centred (8 px of grey above and below): the
    # block lands in cell (2, 1) and its 16 px box maps back to 32 px in the original image.
    (face,) = detector.detect(block_image((128, 96), (32, 48, 64, 80)))
    assert (face.x1, face.y1, face.x2, face.y2) == (32.0, 48.0, 64.0, 80.0)
    assert face.score > 0.9


def test_threshold_and_grey(model: Path) -> None:
    strict = OnnxFaceDetector(model, score_threshold=0.99)
    dim = Image.new("RGB", (64, 64))
    dim.paste((200, 200, 200), (0, 0, 16, 16))  # brightness 0.78
    assert strict.detect(dim) == []
    (face,) = OnnxFaceDetector(model, score_threshold=0.5).detect(dim)
    assert face.score == pytest.approx(200 / 255, abs=1e-4)


def test_load_face_detector_dispatch(model: Path, tmp_path: Path) -> None:
    assert load_face_detector(str(model), score_threshold=0.7).score_threshold == 0.7
    with pytest.raises(FaceDetectionError, match="neither a .onnx file"):
        load_face_detector("faces.pt")
    with pytest.raises(FaceDetectionError, match="no insightface model root"):
        load_face_detector("insightface:")
    with pytest.raises(ModelLoadError, match="face detector model not found"):
        load_face_detector(str(tmp_path / "missing.onnx"))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load face detector model"):
        OnnxFaceDetector(broken)
    with pytest.raises(ModelLoadError, match="between 0 and 1"):
        OnnxFaceDetector(model, score_threshold=2)
    with pytest.raises(ModelLoadError, match="layout"):
        OnnxFaceDetector(model, layout="sideways")


def rows_model(path: Path, rows: np.ndarray) -> Path:
    """A YOLOv5-layout model: an NHWC input, constant candidate rows [1, N, 6] out."""
    import onnx

    graph = helper.make_graph(
        [helper.make_node("Identity", ["rows"], ["output"])],
        "rows",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 32, 32, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(rows.shape))],
        [onnx.numpy_helper.from_array(rows.astype(np.float32), "rows")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_rows_layout_objectness_and_nms(tmp_path: Path) -> None:
    rows = np.array(
        [
            [
                [16, 16, 8, 8, 0.9, 0.9],  # score 0.81
                [17, 16, 8, 8, 0.8, 0.9],  # overlaps the first: suppressed
                [6, 6, 4, 4, 0.9, 0.3],  # objectness 0.9 but class 0.3: 0.27, dropped
                [26, 26, 4, 4, 0.6, 1.0],
            ]
        ]
    )
    # Four candidates of six values would look like columns to "auto": say it.
    path = rows_model(tmp_path / "v5.onnx", rows)
    detector = OnnxFaceDetector(path, objectness=True, layout="rows")
    faces = detector.detect(Image.new("RGB", (64, 64)))
    # The 32 px model input is the 64 px image at half size: boxes double.
    assert [(f.x1, f.y1, f.x2, f.y2) for f in faces] == [(24, 24, 40, 40), (48, 48, 56, 56)]
    assert [round(f.score, 2) for f in faces] == [0.81, 0.6]
    plain = OnnxFaceDetector(path, iou_threshold=1.0, layout="rows")
    assert len(plain.detect(Image.new("RGB", (64, 64)))) == 4


def test_bad_model_shapes(tmp_path: Path) -> None:
    detector = OnnxFaceDetector(rows_model(tmp_path / "narrow.onnx", np.zeros((1, 8, 4))))
    with pytest.raises(ModelLoadError, match="need cx, cy, w, h, score"):
        detector.detect(Image.new("RGB", (8, 8)))


def test_non_max_suppression() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 0, 0]], float)
    scores = np.array([0.5, 0.9, 0.7, 0.95])
    assert non_max_suppression(boxes, scores, 0.5) == [3, 1, 2]
