"""Quality gates of a dataset version: reported as asset checks and by the nightly sweep."""

from __future__ import annotations

from dataclasses import dataclass, field

from lora_pipeline.media.store import DataRoot, UnsafePathError, sha256_file

MIN_APPROVED_IMAGES = 10


@dataclass
class GateResult:
    passed: bool
    description: str
    problems: list[str] = field(default_factory=list)


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
