"""The kohya-ready layout of a dataset version, split by shot type.

```
<out_dir>/
  close/<slug>_close_0001.png  + <slug>_close_0001.txt (caption beside the image, as kohya wants)
  mid/...   far/...   unknown/...   (only the shot types that have images)
  shots.json      per file: shot_type, face_ratio, confidence, face_bbox, image_id, source_file
  metadata.json   person, trigger_word, totals, shot_distribution, detector, warnings, created_at
```
The folder is built beside `out_dir` and swapped in whole, so a trainer never reads a mix of
two builds; the same inputs give the same bytes, `created_at` aside.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from lora_pipeline.dataset.captions import check_captions
from lora_pipeline.dataset.shots import CLOSE_MIN, MID_MIN, SHOT_TYPES, ShotResult, classify_shot
from lora_pipeline.dataset.versions import (
    IMAGES_DIRNAME,
    DatasetError,
    ManifestError,
    validate_manifest,
)
from lora_pipeline.media.images import InvalidImageError, load_image
from lora_pipeline.vision.faces import FaceBox, FaceDetector

SHOTS_FILENAME = "shots.json"
METADATA_FILENAME = "metadata.json"
BALANCED_SHOT_TYPES = ("close", "mid", "far")
MIN_PER_SHOT = 3
MAX_CLOSE_SHARE = 0.60
MAX_FAR_SHARE = 0.50

NOTE_NO_DETECTOR = (
    "No face detector was configured, so every image is classified 'unknown' and shot "
    "balance was not checked."
)
NOTE_WITH_DETECTOR = (
    f"Shot type from the largest detected face's box area over the image area: close above "
    f"{CLOSE_MIN:.0%}, mid {MID_MIN:.0%} to {CLOSE_MIN:.0%}, far below {MID_MIN:.0%}; "
    "'unknown' when no face is detected."
)


class ShotSplitError(DatasetError):
    """The shot split cannot be built from the given version, captions or detector."""


@dataclass
class ShotSplit:
    directory: Path
    shots: dict[str, dict[str, Any]]
    metadata: dict[str, Any]
    distribution: dict[str, int]
    warnings: list[str]


@dataclass(frozen=True)
class _Placement:
    entry: dict[str, Any]
    shot: ShotResult
    target_name: str


def build_shot_splits(
    version_dir: Path,
    manifest: dict[str, Any],
    captions: Mapping[str, str],
    out_dir: Path,
    detector: FaceDetector | None,
    created_at: str,
) -> ShotSplit:
    """Classify every image of the version and publish the kohya layout at `out_dir`."""
    validate_manifest(manifest)
    checked_captions = check_captions(manifest, captions)
    if not isinstance(created_at, str) or not created_at.strip():
        raise ShotSplitError("created_at must be a non-empty timestamp string")
    version_dir, out_dir = Path(version_dir), Path(out_dir)
    _check_out_dir(version_dir, out_dir)
    placements = _classify_all(version_dir, manifest, detector)
    distribution = {shot: 0 for shot in SHOT_TYPES}
    for placement in placements:
        distribution[placement.shot.shot_type] += 1
    warnings = shot_warnings(distribution, detector is not None)
    shots = {p.target_name: _shot_record(p) for p in placements}
    metadata = _metadata(manifest, distribution, detector, warnings, created_at)
    staging = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        for placement in placements:
            _place(version_dir, staging, placement, checked_captions[placement.entry["file"]])
        _write_json(staging / SHOTS_FILENAME, shots)
        _write_json(staging / METADATA_FILENAME, metadata)
        _publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ShotSplit(out_dir, shots, metadata, distribution, warnings)


def shot_warnings(distribution: Mapping[str, int], has_detector: bool) -> list[str]:
    """Balance warnings of the LoRA prep guide; without a detector there is nothing to judge."""
    if not has_detector:
        return []
    warnings = [
        f"only {distribution[shot]} {shot} image(s): at least {MIN_PER_SHOT} per shot type "
        "are recommended"
        for shot in BALANCED_SHOT_TYPES
        if distribution[shot] < MIN_PER_SHOT
    ]
    # Shares are of the images whose shot type is known: unknowns say nothing about balance.
    classified = sum(distribution[shot] for shot in BALANCED_SHOT_TYPES)
    if classified:
        close_share = distribution["close"] / classified
        far_share = distribution["far"] / classified
        if close_share > MAX_CLOSE_SHARE:
            warnings.append(
                f"close shots are {close_share:.0%} of the classified images (over "
                f"{MAX_CLOSE_SHARE:.0%}): the LoRA may struggle with full-body images"
            )
        if far_share > MAX_FAR_SHARE:
            warnings.append(
                f"far shots are {far_share:.0%} of the classified images (over "
                f"{MAX_FAR_SHARE:.0%}): face consistency may suffer"
            )
    if distribution["unknown"]:
        warnings.append(f"{distribution['unknown']} image(s) had no detectable face (unknown)")
    return warnings


def _check_out_dir(version_dir: Path, out_dir: Path) -> None:
    version, out = version_dir.resolve(), out_dir.resolve()
    # Replacing out_dir must never move the version (or the images folder) away.
    if out == version or out in version.parents or out == version / IMAGES_DIRNAME:
        raise ShotSplitError(f"out_dir {out_dir} would replace the dataset version itself")


def _classify_all(
    version_dir: Path, manifest: dict[str, Any], detector: FaceDetector | None
) -> list[_Placement]:
    slug = manifest["character"]
    counters = {shot: 0 for shot in SHOT_TYPES}
    placements = []
    for entry in manifest["images"]:
        shot = _classify_image(version_dir / IMAGES_DIRNAME / entry["file"], entry, detector)
        counters[shot.shot_type] += 1
        suffix = PurePosixPath(entry["file"]).suffix
        name = f"{slug}_{shot.shot_type}_{counters[shot.shot_type]:04d}{suffix}"
        placements.append(_Placement(entry, shot, name))
    return placements


def _classify_image(path: Path, entry: dict[str, Any], detector: FaceDetector | None) -> ShotResult:
    if not path.is_file():
        raise ManifestError(f"image {entry['image_id']} ({entry['file']}) is missing at {path}")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ManifestError(
            f"image {entry['image_id']} ({path}) does not match the sha256 of the manifest"
        )
    try:
        image = load_image(data, name=str(path))
    except InvalidImageError as error:
        raise ShotSplitError(f"cannot read image {entry['image_id']}: {error}") from None
    width, height = image.size
    faces = _detect(detector, image) if detector else []
    return classify_shot(width, height, faces)


def _detect(detector: FaceDetector, image: Image.Image) -> list[FaceBox]:
    faces = list(detector.detect(image))
    if not all(isinstance(face, FaceBox) for face in faces):
        raise ShotSplitError(f"face detector {detector.name!r} returned something not a FaceBox")
    return faces


def _shot_record(placement: _Placement) -> dict[str, Any]:
    shot = placement.shot
    return {
        "shot_type": shot.shot_type,
        "face_ratio": shot.face_ratio,
        "confidence": shot.confidence,
        "face_bbox": shot.face_bbox,
        # The link back to the registry row and the version's file.
        "image_id": placement.entry["image_id"],
        "source_file": placement.entry["file"],
    }


def _metadata(
    manifest: dict[str, Any],
    distribution: dict[str, int],
    detector: FaceDetector | None,
    warnings: list[str],
    created_at: str,
) -> dict[str, Any]:
    return {
        "person": manifest["character"],
        "trigger_word": manifest["trigger_word"],
        "dataset_version": manifest["version_hash"],
        "total_images": len(manifest["images"]),
        "shot_distribution": dict(distribution),
        "top_concepts": [],
        "created_at": created_at,
        "face_detector": detector.name if detector else None,
        "note": NOTE_WITH_DETECTOR if detector else NOTE_NO_DETECTOR,
        "warnings": list(warnings),
    }


def _place(version_dir: Path, staging: Path, placement: _Placement, caption: str) -> None:
    shot_dir = staging / placement.shot.shot_type
    shot_dir.mkdir(exist_ok=True)
    target = shot_dir / placement.target_name
    source = version_dir / IMAGES_DIRNAME / placement.entry["file"]
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    target.with_suffix(".txt").write_text(caption, encoding="utf-8")


def _write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")


def _publish(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    # A folder cannot replace a non-empty folder in one call: move the old one aside first.
    retired = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex}"
    os.replace(out_dir, retired)
    try:
        os.replace(staging, out_dir)
    except OSError:
        os.replace(retired, out_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)
