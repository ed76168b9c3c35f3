"""The whole split of a dataset version, compared with golden files; reproducibility.

Real tiny ONNX models tag and detect; every text file of the layout is compared with
`golden/layout/`, hashes replaced by placeholders (PNG bytes may differ across zlib builds).
Regenerate after an intended change with LORA_PIPELINE_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lora_pipeline.dataset.caption_strategies import CaptionPlan, caption_dataset, load_caption_set
from lora_pipeline.dataset.kohya_layout import SplitOptions, build_shot_splits
from lora_pipeline.dataset.prep_files import SCHEMAS, PrepFileError
from lora_pipeline.dataset.schema import check_schema
from lora_pipeline.dataset.selection import DatasetSelection, dataset_provenance
from lora_pipeline.dataset.versions import (
    build_manifest,
    load_manifest,
    write_dataset_version,
)
from lora_pipeline.media.store import DataRoot
from lora_pipeline.vision.onnx_faces import OnnxFaceDetector
from lora_pipeline.vision.tagger import OnnxTagger
from lora_pipeline_tests.dataset.conftest import store_face_images

GOLDEN = Path(__file__).parent / "golden" / "layout"
CREATED_AT = "2025-12-24T10:30:00"
DESIGN = "1girl, short teal hair, yellow raincoat, red boots"
# (shot, smile, outdoors) for images 1..10
PLAN = [
    ("close", True, False),
    ("mid", False, True),
    ("far", True, True),
    ("close", False, False),
    ("mid", True, False),
    ("mid", False, True),
    ("unknown", False, False),
    ("close", True, True),
    ("far", False, True),
    ("mid", True, False),
]
IMAGE_SUFFIXES = (".png",)


def build(root: DataRoot, models: tuple[Path, Path], out_parent: Path) -> tuple[Path, dict]:
    face_model, tagger_model = models
    provenance = dataset_provenance(
        DatasetSelection(), {"author": "Studio A", "license": "internal use only"}
    )
    manifest = build_manifest("aiko", "aiko", store_face_images(root, PLAN), provenance)
    version_dir = write_dataset_version(root, manifest)
    plan = CaptionPlan(("design", "tags"), design_prompt=DESIGN, tagger=OnnxTagger(tagger_model))
    captions = caption_dataset(version_dir, manifest, plan)
    out = out_parent / manifest["version_hash"]
    options = SplitOptions(person="Aiko", base_model="/models/tiny-sd")
    build_shot_splits(
        version_dir,
        manifest,
        captions.captions,
        out,
        OnnxFaceDetector(face_model),
        CREATED_AT,
        caption_set=captions,
        options=options,
    )
    return out, manifest


def placeholders(text: str, manifest: dict) -> str:
    text = text.replace(manifest["version_hash"], "<version_hash>")
    text = text.replace(manifest["version_hash"][:12], "<version_hash:12>")
    for entry in manifest["images"]:
        text = text.replace(entry["sha256"], f"<sha256 of image {entry['image_id']}>")
    return text


def text_files(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix not in IMAGE_SUFFIXES
    }


@pytest.fixture
def models(tiny_face_model: Path, tiny_tagger_model: Path) -> tuple[Path, Path]:
    return tiny_face_model, tiny_tagger_model


def test_layout_matches_the_golden_files(
    data_root: DataRoot, models: tuple[Path, Path], tmp_path: Path
) -> None:
    out, manifest = build(data_root, models, tmp_path / "kohya")
    listing = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    produced = {name: placeholders(text, manifest) for name, text in text_files(out).items()}
    produced["FILES.txt"] = "\n".join(listing) + "\n"
    if os.environ.get("LORA_PIPELINE_UPDATE_GOLDEN"):
        shutil.rmtree(GOLDEN, ignore_errors=True)
        for name, text in produced.items():
            (GOLDEN / name).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / name).write_text(text, encoding="utf-8")
    assert produced == text_files(GOLDEN)
    for name, schema in SCHEMAS.items():
        check_schema(json.loads((out / name).read_text()), schema, name, PrepFileError)


def test_golden_files_follow_seed_002() -> None:
    metadata = json.loads((GOLDEN / "metadata.json").read_text())
    assert list(metadata) == [
        "person",
        "trigger_word",
        "total_images",
        "shot_distribution",
        "top_concepts",
        "created_at",
    ]
    assert metadata["shot_distribution"] == {"close": 3, "mid": 4, "far": 2, "unknown": 1}
    assert metadata["top_concepts"][0] == {"concept": "boots", "count": 10, "frequency": 1.0}
    shots = json.loads((GOLDEN / "shots.json").read_text())
    assert shots["aiko_close_0001.png"] == {
        "shot_type": "close",
        "face_ratio": 0.5625,
        "confidence": 1.0,
        "face_bbox": [0, 0, 48, 48],
    }
    assert shots["aiko_far_0001.png"]["face_ratio"] == 0.0352
    concepts = json.loads((GOLDEN / "concepts.json").read_text())
    assert list(concepts["aiko_mid_0001.png"]) == [
        "raw_caption",
        "concepts",
        "pose",
        "setting",
        "lighting",
        "clothing",
        "attributes",
    ]
    preview = json.loads((GOLDEN / "preview_manifest.json").read_text())
    assert preview["dataset"] == {"name": "Aiko", "trigger": "aiko", "total_images": 10}
    assert list(preview["images"][0]) == [
        "filename",
        "shot_type",
        "shot_confidence",
        "caption",
        "concepts",
        "pose",
        "setting",
    ]
    # Captions: trigger word, shot tag, design prompt, then the tags the images do not share.
    assert (GOLDEN / "close" / "aiko_close_0001.txt").read_text() == (
        "aiko, headshot, 1girl, short teal hair, yellow raincoat, red boots, smile, ^_^"
    )


def test_version_and_split_are_reproducible_from_the_manifest(
    data_root: DataRoot, models: tuple[Path, Path], tmp_path: Path
) -> None:
    out, manifest = build(data_root, models, tmp_path / "kohya")
    version_dir = data_root.path(f"datasets/aiko/{manifest['version_hash']}")
    original = {
        p.relative_to(version_dir): p.read_bytes() for p in version_dir.rglob("*") if p.is_file()
    }

    # Another machine: only the manifest file and the content-addressed images it names.
    other = DataRoot(tmp_path / "elsewhere")
    for entry in manifest["images"]:
        (other.root / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_root.path(entry["path"]), other.root / entry["path"])
    saved = json.loads((version_dir / "manifest.json").read_text())
    rebuilt_dir = write_dataset_version(other, saved)
    assert load_manifest(rebuilt_dir) == manifest
    rebuilt = {
        p.relative_to(rebuilt_dir): p.read_bytes() for p in rebuilt_dir.rglob("*") if p.is_file()
    }
    assert rebuilt == {name: data for name, data in original.items() if name.parts[0] != "captions"}

    # The split rebuilt from the version's captions.json: the same bytes but for created_at.
    shutil.copytree(version_dir / "captions", rebuilt_dir / "captions")
    caption_set = load_caption_set(rebuilt_dir, saved)
    again = tmp_path / "again" / manifest["version_hash"]
    build_shot_splits(
        rebuilt_dir,
        saved,
        caption_set.captions,
        again,
        OnnxFaceDetector(models[0]),
        "another time",
        caption_set=caption_set,
        options=SplitOptions(person="Aiko", base_model="/models/tiny-sd"),
    )
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    second = {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()}
    assert set(first) == set(second)
    differing = sorted(str(name) for name in first if first[name] != second[name])
    assert differing == ["metadata.json", "training_info.json"]
