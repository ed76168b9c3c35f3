"""Issue 17: frames per second for detect → crop → identify (CCIP reference matching) on the CPU,
against the bare person-detector loop over the same frames."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.run import Result
from lora_pipeline.vision.ccip import load_ccip
from lora_pipeline.vision.face_detector_factory import load_yolo_detector
from lora_pipeline.vision.identification import CharacterProfile
from lora_pipeline.vision.persons import find_persons
from lora_pipeline.vision.reference import ReferenceIdentifier, ReferenceImage
from lora_pipeline.vision.tiny_onnx import build_tiny_ccip, build_tiny_grid_detector

FRAMES = 200
HEIGHT, WIDTH, COLUMN = 720, 1280, 160
COLOURS = [(220, 30, 30), (30, 30, 220), (30, 220, 30)]


def _frame(index: int) -> Image.Image:
    pixels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    for slot, colour in enumerate(COLOURS):
        left = ((index + slot * 3) % (WIDTH // COLUMN)) * COLUMN
        pixels[:, left : left + COLUMN] = colour
    return Image.fromarray(pixels)


def run() -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        path = build_tiny_grid_detector(home / "persons.onnx", (HEIGHT, WIDTH), (HEIGHT, COLUMN))
        detector = load_yolo_detector(str(path), "person detector", score_threshold=0.2)
        feat, metrics = build_tiny_ccip(home / "ccip", input_size=64)
        refs = {}
        for slot, colour in enumerate(COLOURS[:2]):
            ref = home / f"ref{slot}.png"
            Image.new("RGB", (COLUMN, HEIGHT), colour).save(ref)
            refs[f"c{slot}"] = [ReferenceImage(f"{slot}" * 64, ref)]
        identifier = ReferenceIdentifier(
            "ccip", lambda slug: refs[slug], threshold=0.9,
            embedder=load_ccip(f"ccip:{feat}#{metrics}"),
        )  # fmt: skip
        candidates = [CharacterProfile(slug, slug, "") for slug in refs]
        frames = [_frame(i) for i in range(FRAMES)]

        start = time.perf_counter()
        boxes = sum(len(detector.detect(frame)) for frame in frames)
        bare = time.perf_counter() - start

        start = time.perf_counter()
        crops = 0
        for frame in frames:
            found = find_persons(frame, detector, 0.15)
            images = [frame.crop(person.box) for person in found]
            identifier.identify(images, candidates)
            crops += len(images)
        full = time.perf_counter() - start
    return Result(
        "detect → crop → identify",
        full,
        bare,
        "bare detector loop",
        {
            "frames": f"{FRAMES} at {WIDTH}x{HEIGHT}, 3 persons each",
            "persons detected": boxes,
            "crops identified": crops,
            "fps detect+crop+identify": round(FRAMES / full, 1),
            "fps bare detector": round(FRAMES / bare, 1),
        },
    )
