"""Quality gates of a dataset version: reported as asset checks and by the nightly sweep.

Each gate returns a GateResult: passed or not, a one-line description and the problems found.
Whether a failed gate blocks training is the caller's decision (the asset check's severity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lora_pipeline.dataset.captions import CAPTIONS_DIRNAME, caption_file_name, starts_with_word
from lora_pipeline.dataset.perceptual import (
    MAX_HASH_DISTANCE,
    Fingerprint,
    duplicate_groups,
    fingerprint,
    near_duplicates,
)
from lora_pipeline.dataset.versions import IMAGES_DIRNAME
from lora_pipeline.media.images import InvalidImageError, load_image
from lora_pipeline.media.store import DataRoot, UnsafePathError, sha256_file

MIN_APPROVED_IMAGES = 10
# The LoRA trains at 512 (SD1.5) or 1024 (SDXL); a smaller image is upscaled and looks soft.
MIN_SHORT_SIDE = 512
RESOLUTION_GATES = ("warn", "block")


@dataclass
class GateResult:
    passed: bool
    description: str
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImageScan:
    """What decoding one image of a version told: its size and fingerprint, or why it failed."""

    image_id: int
    file: str
    width: int | None
    height: int | None
    fingerprint: Fingerprint | None
    error: str | None = None


def enough_images(manifest: dict, minimum: int = MIN_APPROVED_IMAGES) -> GateResult:
    count = len(manifest["images"])
    return GateResult(
        passed=count >= minimum,
        description=f"{count} approved images; training needs at least {minimum}",
    )


def files_match_manifest(root: DataRoot, manifest: dict) -> GateResult:
    """Every image the manifest names is readable and has the hash the manifest says."""
    problems = []
    for item in manifest["images"]:
        try:
            path = root.path(item["path"])
        except UnsafePathError as exc:
            problems.append(f"image {item['image_id']}: {exc}")
            continue
        if not path.is_file():
            problems.append(f"image {item['image_id']}: missing file {item['path']}")
        elif sha256_file(path) != item["sha256"]:
            problems.append(f"image {item['image_id']}: content changed since approval")
    total = len(manifest["images"])
    return GateResult(
        passed=not problems,
        description=f"{total - len(problems)}/{total} image files intact",
        problems=problems,
    )


def scan_images(version_dir: Path, manifest: dict) -> list[ImageScan]:
    """Decode every image of a published version once, for the gates below."""
    scans = []
    for entry in manifest["images"]:
        path = Path(version_dir) / IMAGES_DIRNAME / entry["file"]
        try:
            image = load_image(path)
        except InvalidImageError as error:
            scans.append(ImageScan(entry["image_id"], entry["file"], None, None, None, str(error)))
            continue
        scans.append(ImageScan(entry["image_id"], entry["file"], *image.size, fingerprint(image)))
    return scans


def readable_images(scans: Sequence[ImageScan]) -> GateResult:
    """Every image decodes (a truncated or foreign file would crash training later)."""
    problems = [f"image {s.image_id} ({s.file}): {s.error}" for s in scans if s.error]
    total = len(scans)
    return GateResult(
        passed=not problems,
        description=f"{total - len(problems)}/{total} images decode",
        problems=problems,
    )


def minimum_resolution(
    scans: Sequence[ImageScan], min_short_side: int = MIN_SHORT_SIDE
) -> GateResult:
    """Every readable image has a short side of at least `min_short_side` pixels."""
    small = [
        f"image {s.image_id} ({s.file}) is {s.width}x{s.height}"
        for s in scans
        if s.width is not None and min(s.width, s.height) < min_short_side
    ]
    readable = sum(1 for s in scans if s.width is not None)
    return GateResult(
        passed=not small,
        description=(
            f"{readable - len(small)}/{readable} images have a short side of at least "
            f"{min_short_side} px"
        ),
        problems=small,
    )


def no_near_duplicates(
    scans: Sequence[ImageScan], max_hash_distance: int = MAX_HASH_DISTANCE
) -> GateResult:
    """No two images of the version are near-duplicates (they would weigh double in training)."""
    readable = [s for s in scans if s.fingerprint is not None]
    pairs = near_duplicates([s.fingerprint for s in readable], max_hash_distance)
    groups = duplicate_groups(len(readable), pairs)
    problems = [
        "near-duplicates: "
        + ", ".join(f"{readable[i].file} (id {readable[i].image_id})" for i in group)
        for group in groups
    ]
    extra = sum(len(group) - 1 for group in groups)
    return GateResult(
        passed=not groups,
        description=(
            f"{len(groups)} group(s) of near-duplicates, {extra} image(s) more than needed"
            if groups
            else f"no near-duplicates among {len(readable)} images"
        ),
        problems=problems,
    )


def captions_complete(version_dir: Path, manifest: dict) -> GateResult:
    """Every image has a non-empty caption file that starts with the trigger word."""
    captions_dir = Path(version_dir) / CAPTIONS_DIRNAME
    trigger = manifest["trigger_word"]
    problems = []
    for entry in manifest["images"]:
        path = captions_dir / caption_file_name(entry["file"])
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            problems.append(f"{entry['file']}: no readable caption file {path.name}")
            continue
        if not text:
            problems.append(f"{entry['file']}: empty caption")
        elif not starts_with_word(text, trigger):
            problems.append(f"{entry['file']}: caption does not start with {trigger!r}")
    total = len(manifest["images"])
    return GateResult(
        passed=not problems,
        description=f"{total - len(problems)}/{total} images have a caption with the trigger word",
        problems=problems,
    )
