"""insightface's FaceAnalysis (detection only) on a tiny SCRFD model pack built in the test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.vision.face_detector_factory import load_face_detector
from lora_pipeline.vision.faces import FaceDetector
from lora_pipeline.vision.insightface_faces import (
    InsightFaceDetector,
    InsightFaceUnavailable,
    model_folder,
)
from lora_pipeline.vision.onnx_models import ModelLoadError
from lora_pipeline.vision.tiny_onnx import build_tiny_scrfd

insightface = pytest.importorskip(
    "insightface", reason="insightface is an optional extra (pip install 'lora_pipeline[faces]')"
)


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("insightface")
    build_tiny_scrfd(root / "models" / "tiny_pack")
    return root


def face_at(row: int, col: int) -> Image.Image:
    image = Image.new("RGB", (64, 64))
    image.paste((255, 255, 255), (col * 16, row * 16, col * 16 + 16, row * 16 + 16))
    return image


def test_detects_the_planted_face(model_root: Path) -> None:
    detector = InsightFaceDetector(model_root, "tiny_pack", device="cpu")
    assert isinstance(detector, FaceDetector)
    assert detector.name == "insightface:tiny_pack"
    (face,) = detector.detect(face_at(2, 1))
    assert (face.x1, face.y1, face.x2, face.y2) == (16.0, 32.0, 32.0, 48.0)
    assert face.score == pytest.approx(0.996, abs=1e-3)
    assert detector.detect(Image.new("RGB", (64, 64))) == []


def test_configured_by_a_spec_string(model_root: Path) -> None:
    detector = load_face_detector(f"insightface:{model_root}#tiny_pack", score_threshold=0.999)
    assert detector.name == "insightface:tiny_pack"
    assert detector.detect(face_at(0, 0)) == []  # 0.996 is under the threshold
    # The pack folder itself works as a name, as with FaceAnalysis.
    direct = InsightFaceDetector(model_root, str(model_root / "models" / "tiny_pack"))
    assert len(direct.detect(face_at(3, 3))) == 1


def test_missing_pack_is_refused_before_any_download(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no insightface model pack 'buffalo_l'"):
        load_face_detector(f"insightface:{tmp_path}")
    assert not (tmp_path / "models").exists()
    (tmp_path / "models" / "empty").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match="put its .onnx files in"):
        model_folder(tmp_path, "empty")


def test_clear_message_without_insightface(
    model_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "insightface.app", None)
    with pytest.raises(InsightFaceUnavailable, match=r"lora_pipeline\[faces\]"):
        InsightFaceDetector(model_root, "tiny_pack")
