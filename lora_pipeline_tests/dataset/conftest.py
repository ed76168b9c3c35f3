"""Helpers of the dataset tests: a data root with real, distinct PNG images; tiny ONNX models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.dataset.versions import ManifestImage
from lora_pipeline.media.store import DataRoot
from lora_pipeline.vision.tiny_onnx import TinyTag, build_tiny_face_detector, build_tiny_tagger


def colour_of(index: int) -> tuple[int, int, int]:
    """A distinct solid colour per index, so every image has its own sha256."""
    return (index * 37 % 256, index * 11 % 256, 200 - index)


def store_images(
    root: DataRoot, ids: Sequence[int], size: tuple[int, int] = (64, 48)
) -> list[ManifestImage]:
    images = []
    for image_id in ids:
        stored = root.put_image(Image.new("RGB", size, colour_of(image_id)))
        images.append(
            ManifestImage(
                image_id=image_id,
                sha256=stored.sha256,
                path=stored.relpath,
                width=stored.width,
                height=stored.height,
                origin="generated" if image_id % 2 else "frame",
                provenance={"seed": image_id},
            )
        )
    return images


@pytest.fixture
def data_root(tmp_path: Path) -> DataRoot:
    return DataRoot(tmp_path / "data")


# --- tiny ONNX models and images they answer to ---------------------------------------------

# On a 64 x 64 image, the tiny detector's box for a bright block in cell (row, col): the box is
# centred on the cell, so these sizes give close (56 %), mid (14 %) and far (3.5 %) faces.
SHOT_CELLS = {"close": (1, 1), "mid": (2, 2), "far": (3, 3)}
_BOX_SIDES = {(1, 1): 48.0, (2, 2): 24.0, (3, 3): 12.0}
FACE_SIDE = 64

TINY_TAGS = [
    TinyTag("general", 9, bias=2.0),
    TinyTag("sensitive", 9, bias=0.0),
    TinyTag("1girl", 0, bias=5.0),
    TinyTag("teal_hair", 0, bias=4.0),
    TinyTag("watermark", 0, bias=3.0),
    # A blue-ish background reads as smiling, a green-ish one as outdoors.
    TinyTag("smile", 0, rgb_weights=(0.0, 0.0, 10.0), bias=-3.0),
    TinyTag("outdoors", 0, rgb_weights=(0.0, 10.0, 0.0), bias=-3.0),
    TinyTag("^_^", 0, rgb_weights=(0.0, 0.0, 10.0), bias=-3.5),
    TinyTag("aiko_(demo)", 4, bias=5.0),
]


def box_size(row: int, col: int) -> tuple[float, float]:
    side = _BOX_SIDES.get((row, col), 16.0)
    return side, side


def face_image(
    index: int, shot: str, *, smile: bool = False, outdoors: bool = False
) -> Image.Image:
    """A dark image (distinct per index) with a white 16 x 16 'face' in the shot's cell."""
    background = (index * 3 % 40, 150 if outdoors else 0, 150 if smile else 0)
    image = Image.new("RGB", (FACE_SIDE, FACE_SIDE), background)
    if shot in SHOT_CELLS:
        row, col = SHOT_CELLS[shot]
        image.paste((255, 255, 255), (col * 16, row * 16, col * 16 + 16, row * 16 + 16))
    return image


def store_face_images(
    root: DataRoot, plan: Sequence[tuple[str, bool, bool]]
) -> list[ManifestImage]:
    """Images 1..n from (shot, smile, outdoors) triples."""
    images = []
    for image_id, (shot, smile, outdoors) in enumerate(plan, start=1):
        stored = root.put_image(face_image(image_id, shot, smile=smile, outdoors=outdoors))
        images.append(
            ManifestImage(
                image_id, stored.sha256, stored.relpath, FACE_SIDE, FACE_SIDE, "generated", {}
            )
        )
    return images


@pytest.fixture(scope="session")
def tiny_face_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-faces")
    return build_tiny_face_detector(folder / "faces.onnx", FACE_SIDE, box_size)


@pytest.fixture(scope="session")
def tiny_tagger_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tagger(tmp_path_factory.mktemp("tiny-tagger"), TINY_TAGS)
