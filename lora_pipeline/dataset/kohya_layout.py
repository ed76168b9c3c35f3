"""The kohya-ready layout of a dataset version, split by shot type (the LoRA prep guide).

```
<out_dir>/
  close/<slug>_close_0001.png + <slug>_close_0001.txt   caption beside the image, as kohya wants
  mid/…  far/…  unknown/…          only the shot types that have images
  shots.json  metadata.json  concepts.json  preview_manifest.json      seed 002's formats
  dataset_manifest.json            the version's manifest with captions, shots, tags, concepts
  dataset.toml  kohya_config.json  training_config.json  training_info.json  train.sh
  metadata.jsonl                   captions for diffusers' imagefolder loader
```
Each caption keeps the trigger word first and gets its shot type's tag second ("headshot",
"portrait", "full body"), so the LoRA learns the framing words too. The folder is built beside
`out_dir` and swapped in whole, so a trainer never reads a mix of two builds; the same inputs
give the same bytes, but for `created_at` in metadata.json and training_info.json.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from lora_pipeline.dataset.balance import balance_repeats
from lora_pipeline.dataset.caption_strategies import CaptionSet, caption_set_from_captions
from lora_pipeline.dataset.captions import check_captions, normalize_caption
from lora_pipeline.dataset.kohya_files import (
    Subset,
    TrainingPlan,
    training_config,
    write_training_files,
)
from lora_pipeline.dataset.prep_files import (
    CONCEPTS_FILENAME,
    DATASET_MANIFEST_FILENAME,
    METADATA_FILENAME,
    PREVIEW_FILENAME,
    SHOTS_FILENAME,
    Placement,
    concepts_file,
    dataset_manifest,
    metadata_file,
    preview_manifest,
    shots_file,
    write_prep_file,
)
from lora_pipeline.dataset.shots import CLOSE_MIN, MID_MIN, SHOT_TYPES, ShotResult, classify_shot
from lora_pipeline.dataset.versions import (
    IMAGES_DIRNAME,
    DatasetError,
    ManifestError,
    validate_manifest,
)
from lora_pipeline.files import atomic_folder
from lora_pipeline.media.images import InvalidImageError, load_image
from lora_pipeline.training.defaults import SmartDefaultsError, normalize_base_model_version
from lora_pipeline.vision.faces import FaceBox, FaceDetector

BALANCED_SHOT_TYPES = ("close", "mid", "far")
DEFAULT_SHOT_TAGS = {"close": "headshot", "mid": "portrait", "far": "full body"}
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


@dataclass(frozen=True)
class SplitOptions:
    """How to name, tag and configure the split; the defaults suit an SD1.5 character LoRA."""

    person: str | None = None  # the display name; the character slug when not given
    shot_tags: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SHOT_TAGS))
    min_per_shot: int = MIN_PER_SHOT
    base_model: str | None = None
    base_model_version: str = "sd15"


@dataclass
class ShotSplit:
    directory: Path
    shots: dict[str, dict[str, Any]]
    metadata: dict[str, Any]
    distribution: dict[str, int]
    warnings: list[str]
    repeats: dict[str, int] = field(default_factory=dict)
    top_concepts: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    face_detector: str | None = None


def build_shot_splits(
    version_dir: Path,
    manifest: dict[str, Any],
    captions: Mapping[str, str],
    out_dir: Path,
    detector: FaceDetector | None,
    created_at: str,
    *,
    caption_set: CaptionSet | None = None,
    options: SplitOptions | None = None,
) -> ShotSplit:
    """Classify every image of the version and publish the kohya layout at `out_dir`."""
    validate_manifest(manifest)
    checked_captions = check_captions(manifest, captions)
    caption_set = _matching_caption_set(manifest, checked_captions, caption_set)
    if not isinstance(created_at, str) or not created_at.strip():
        raise ShotSplitError("created_at must be a non-empty timestamp string")
    options = _checked_options(options or SplitOptions())
    version_dir, out_dir = Path(version_dir), Path(out_dir)
    _check_out_dir(version_dir, out_dir)
    person = options.person or manifest["character"]
    placements = _placements(version_dir, manifest, checked_captions, detector, options)
    distribution = {shot: 0 for shot in SHOT_TYPES}
    for placement in placements:
        distribution[placement.shot.shot_type] += 1
    warnings = shot_warnings(distribution, detector is not None, options.min_per_shot)
    repeats = balance_repeats(distribution)
    plan = _training_plan(manifest, person, out_dir, options, distribution, repeats)
    shots = shots_file(placements)
    metadata = metadata_file(
        person, manifest["trigger_word"], distribution, caption_set.top_concepts, created_at
    )
    shots_summary = {
        "face_detector": detector.name if detector else None,
        "note": NOTE_WITH_DETECTOR if detector else NOTE_NO_DETECTOR,
        "distribution": distribution,
        "warnings": warnings,
    }
    files = {
        SHOTS_FILENAME: shots,
        METADATA_FILENAME: metadata,
        CONCEPTS_FILENAME: concepts_file(placements, caption_set),
        PREVIEW_FILENAME: preview_manifest(
            person, manifest["trigger_word"], placements, caption_set
        ),
        DATASET_MANIFEST_FILENAME: dataset_manifest(
            manifest,
            person,
            placements,
            caption_set,
            shots_summary,
            [subset.record() for subset in plan.subsets],
        ),
    }
    with atomic_folder(out_dir) as staging:
        for placement in placements:
            _place(version_dir, staging, placement)
        for name, value in files.items():
            write_prep_file(staging, name, value)
        write_training_files(
            staging,
            plan,
            created_at,
            distribution,
            warnings,
            [(p.relpath, p.caption) for p in placements],
        )
    return ShotSplit(
        directory=out_dir,
        shots=shots,
        metadata=metadata,
        distribution=distribution,
        warnings=warnings,
        repeats=repeats,
        top_concepts=caption_set.top_concepts,
        training=training_config(plan),
        face_detector=detector.name if detector else None,
    )


def shot_warnings(
    distribution: Mapping[str, int], has_detector: bool, min_per_shot: int = MIN_PER_SHOT
) -> list[str]:
    """Balance warnings of the LoRA prep guide; without a detector there is nothing to judge."""
    if not has_detector:
        return []
    warnings = [
        f"only {distribution[shot]} {shot} image(s): at least {min_per_shot} per shot type "
        "are recommended"
        for shot in BALANCED_SHOT_TYPES
        if distribution[shot] < min_per_shot
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


def shot_caption(caption: str, shot_tag: str | None) -> str:
    """The caption with the shot tag second, right after the trigger-led first part."""
    if not shot_tag:
        return caption
    first, *rest = (part.strip() for part in caption.split(","))
    rest = [part for part in rest if part and part.casefold() != shot_tag.casefold()]
    return ", ".join([first, shot_tag, *rest])


def _matching_caption_set(
    manifest: dict[str, Any], captions: dict[str, str], caption_set: CaptionSet | None
) -> CaptionSet:
    if caption_set is None:
        return caption_set_from_captions(manifest["trigger_word"], captions)
    if caption_set.captions != captions:
        raise ShotSplitError("the caption set does not hold the captions given for this version")
    return caption_set


def _checked_options(options: SplitOptions) -> SplitOptions:
    try:
        version = normalize_base_model_version(options.base_model_version)
    except SmartDefaultsError as error:
        raise ShotSplitError(str(error)) from None
    if isinstance(options.min_per_shot, bool) or not isinstance(options.min_per_shot, int):
        raise ShotSplitError(f"min_per_shot must be an integer, got {options.min_per_shot!r}")
    tags = {}
    for shot, tag in options.shot_tags.items():
        cleaned = normalize_caption(tag)
        if shot not in BALANCED_SHOT_TYPES or not cleaned or "," in cleaned:
            raise ShotSplitError(
                f"shot tag {shot!r}: {tag!r} must belong to close, mid or far and be one "
                "comma-free phrase"
            )
        tags[shot] = cleaned
    return SplitOptions(
        person=normalize_caption(options.person) if options.person else None,
        shot_tags=tags,
        min_per_shot=options.min_per_shot,
        base_model=options.base_model,
        base_model_version=version,
    )


def _check_out_dir(version_dir: Path, out_dir: Path) -> None:
    version, out = version_dir.resolve(), out_dir.resolve()
    # Replacing out_dir must never move the version (or the images folder) away.
    if out == version or out in version.parents or out == version / IMAGES_DIRNAME:
        raise ShotSplitError(f"out_dir {out_dir} would replace the dataset version itself")


def _placements(
    version_dir: Path,
    manifest: dict[str, Any],
    captions: Mapping[str, str],
    detector: FaceDetector | None,
    options: SplitOptions,
) -> list[Placement]:
    slug = manifest["character"]
    counters = {shot: 0 for shot in SHOT_TYPES}
    placements = []
    for entry in manifest["images"]:
        shot = _classify_image(version_dir / IMAGES_DIRNAME / entry["file"], entry, detector)
        counters[shot.shot_type] += 1
        suffix = PurePosixPath(entry["file"]).suffix
        name = f"{slug}_{shot.shot_type}_{counters[shot.shot_type]:04d}{suffix}"
        caption = shot_caption(captions[entry["file"]], options.shot_tags.get(shot.shot_type))
        placements.append(Placement(entry, shot, shot.shot_type, name, caption))
    # Files listed by folder and number, as a person browsing the split sees them.
    return sorted(placements, key=lambda p: p.relpath)


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


def _training_plan(
    manifest: dict[str, Any],
    person: str,
    out_dir: Path,
    options: SplitOptions,
    distribution: Mapping[str, int],
    repeats: Mapping[str, int],
) -> TrainingPlan:
    subsets = tuple(
        Subset(
            shot_type=shot,
            folder=shot,
            images=distribution[shot],
            num_repeats=repeats[shot],
            shot_tag=options.shot_tags.get(shot),
            # The trigger word, and the shot tag when there is one, stay first on shuffling.
            keep_tokens=2 if options.shot_tags.get(shot) else 1,
        )
        for shot in SHOT_TYPES
        if distribution[shot]
    )
    return TrainingPlan(
        person=person,
        character=manifest["character"],
        trigger_word=manifest["trigger_word"],
        version_hash=manifest["version_hash"],
        folder_name=out_dir.name,
        base_model=options.base_model,
        base_model_version=options.base_model_version,
        subsets=subsets,
    )


def _place(version_dir: Path, staging: Path, placement: Placement) -> None:
    shot_dir = staging / placement.folder
    shot_dir.mkdir(exist_ok=True)
    target = shot_dir / placement.target_name
    source = version_dir / IMAGES_DIRNAME / placement.entry["file"]
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    target.with_suffix(".txt").write_text(placement.caption, encoding="utf-8")
