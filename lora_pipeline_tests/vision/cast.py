"""Synthetic episode frames with drawn characters at known places, and tiny detectors that find
exactly them (issue 17's tests and benchmarks).

A frame is 512 × 256, black, split into four 128-wide columns. A character fills one column:
its body in its colour, its head a bright 64 × 32 block at the top right of the column. The tiny
person detector scores 128 × 256 cells by brightness (a body passes its 0.3 threshold, black does
not) and the head detector 64 × 32 cells (only a head passes 0.8), so every box is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lora_pipeline.vision.face_detector_factory import load_yolo_detector
from lora_pipeline.vision.faces import FaceDetector
from lora_pipeline.vision.tiny_onnx import build_tiny_grid_detector

WIDTH, HEIGHT = 512, 256
COLUMN = 128
HEAD_W, HEAD_H = 64, 32
SKIN = (255, 240, 220)
# The fake Ollama reads mostly-red as Aiko and mostly-blue as Kenji; green is no one it knows.
AIKO = (220, 30, 30)
KENJI = (30, 30, 220)
STRANGER = (30, 220, 30)
PERSON_THRESHOLD = 0.3
HEAD_THRESHOLD = 0.8


def draw_frame(
    figures: Sequence[tuple[int, tuple[int, int, int]]],
    seed: int = 0,
    jitter: int = 12,
    width: int = WIDTH,
) -> Image.Image:
    """Characters (column, body colour) on black; `jitter` varies the colour per frame."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((HEIGHT, width, 3), dtype=np.int16)
    for column, colour in figures:
        left = column * COLUMN
        shade = np.asarray(colour) + rng.integers(-jitter, jitter + 1, 3)
        pixels[:, left : left + COLUMN] = shade
        pixels[:HEAD_H, left + COLUMN - HEAD_W : left + COLUMN] = SKIN
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def person_box(column: int) -> tuple[float, float, float, float]:
    return (float(column * COLUMN), 0.0, float(column * COLUMN + COLUMN), float(HEIGHT))


def head_box(column: int) -> tuple[float, float, float, float]:
    right = float(column * COLUMN + COLUMN)
    return (right - HEAD_W, 0.0, right, float(HEAD_H))


def build_detectors(folder: Path, width: int = WIDTH) -> tuple[Path, Path]:
    """The person and head detectors for frames `width` wide, as ONNX files."""
    folder.mkdir(parents=True, exist_ok=True)
    persons = build_tiny_grid_detector(folder / "persons.onnx", (HEIGHT, width), (HEIGHT, COLUMN))
    heads = build_tiny_grid_detector(folder / "heads.onnx", (HEIGHT, width), (HEAD_H, HEAD_W))
    return persons, heads


def load_detectors(folder: Path) -> tuple[FaceDetector, FaceDetector]:
    persons, heads = build_detectors(folder)
    # Four person cells give a [1, 5, 4] output: fewer candidates than values, so say how.
    return (
        load_yolo_detector(
            str(persons), "person detector", score_threshold=PERSON_THRESHOLD, layout="columns"
        ),
        load_yolo_detector(str(heads), "head detector", score_threshold=HEAD_THRESHOLD),
    )
