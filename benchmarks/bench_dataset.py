"""Pipeline overhead of the dataset stages: captions (WD14-style tagger, concepts, caption files)
and shot_splits (face detection, kohya layout, seed 002's JSON files, training configs) against a
bare loop that decodes the same images and runs the same tagger and detector, writing nothing.

The tiny ONNX models take the real models' input sizes (448 px tagger, 640 px detector), so the
preprocessing is real-sized; their compute is nearly free, which isolates the pipeline's cost.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

from PIL import Image

from benchmarks.run import Result
from lora_pipeline.dataset.caption_strategies import CaptionPlan, caption_dataset
from lora_pipeline.dataset.kohya_layout import SplitOptions, build_shot_splits
from lora_pipeline.dataset.versions import (
    IMAGES_DIRNAME,
    ManifestImage,
    build_manifest,
    write_dataset_version,
)
from lora_pipeline.media.images import load_image
from lora_pipeline.media.store import DataRoot
from lora_pipeline.vision.onnx_faces import OnnxFaceDetector
from lora_pipeline.vision.tagger import OnnxTagger
from lora_pipeline.vision.tiny_onnx import TinyTag, build_tiny_face_detector, build_tiny_tagger

IMAGES = 32
SIDE = 768
ROUNDS = 3
TAGS = [
    TinyTag("general", 9, bias=2.0),
    TinyTag("1girl", 0, bias=5.0),
    TinyTag("teal_hair", 0, bias=4.0),
    TinyTag("smile", 0, rgb_weights=(0.0, 0.0, 10.0), bias=-3.0),
    TinyTag("outdoors", 0, rgb_weights=(0.0, 10.0, 0.0), bias=-3.0),
    TinyTag("standing", 0, rgb_weights=(10.0, 0.0, 0.0), bias=-2.0),
]


def _timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _image(index: int) -> Image.Image:
    """A dark picture with a bright 'face' whose size sets the shot type."""
    background = (index * 7 % 90, 140 if index % 3 else 20, 150 if index % 2 else 10)
    image = Image.new("RGB", (SIDE, SIDE), background)
    face = (SIDE // 2, SIDE // 5, SIDE // 10)[index % 3]
    left = (index * 37) % (SIDE - face)
    image.paste((255, 255, 255), (left, SIDE // 4, left + face, SIDE // 4 + face))
    return image


def _dataset(root: DataRoot) -> tuple[Path, dict]:
    images = []
    for image_id in range(1, IMAGES + 1):
        stored = root.put_image(_image(image_id))
        images.append(
            ManifestImage(image_id, stored.sha256, stored.relpath, SIDE, SIDE, "generated")
        )
    manifest = build_manifest("bench", "bench", images)
    return write_dataset_version(root, manifest), manifest


def run() -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        tagger = OnnxTagger(build_tiny_tagger(home / "tagger", TAGS, input_size=448))
        detector = OnnxFaceDetector(build_tiny_face_detector(home / "faces.onnx", 640))
        version_dir, manifest = _dataset(DataRoot(home / "data"))
        plan = CaptionPlan(("design", "tags"), design_prompt="1girl, teal hair", tagger=tagger)
        files = [version_dir / IMAGES_DIRNAME / entry["file"] for entry in manifest["images"]]

        def bare() -> None:
            for start in range(0, len(files), tagger.batch_size):
                images = [load_image(path) for path in files[start : start + tagger.batch_size]]
                tagger.tag(images)
                for image in images:
                    detector.detect(image)

        def pipeline() -> None:
            out = home / "kohya" / manifest["version_hash"]
            captions = caption_dataset(version_dir, manifest, plan)
            build_shot_splits(
                version_dir,
                manifest,
                captions.captions,
                out,
                detector,
                "bench",
                caption_set=captions,
                options=SplitOptions(base_model="/models/base"),
            )
            shutil.rmtree(out)

        bare()  # warm the sessions and the page cache outside both timings
        # Alternate the two, several rounds, and keep the medians: a busy machine slows both.
        baseline_runs, measured_runs = [], []
        for _ in range(ROUNDS):
            baseline_runs.append(_timed(bare))
            measured_runs.append(_timed(pipeline))
        baseline, measured = median(baseline_runs), median(measured_runs)
    return Result(
        name=f"dataset stages: captions + shot_splits ({IMAGES} images, {SIDE} px, tiny models)",
        measured_s=measured,
        baseline_s=baseline,
        baseline="bare decode + tagger + detector loop",
        figures={
            "images": IMAGES,
            "rounds": ROUNDS,
            "images_per_s": round(IMAGES / measured, 1),
            "baseline_images_per_s": round(IMAGES / baseline, 1),
            "overhead_per_image_ms": round((measured - baseline) / IMAGES * 1000, 1),
        },
    )
