"""The dataset stages over the registry: approved images → version → captions → shot splits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lora_pipeline.dataset.captions import caption_dataset_design
from lora_pipeline.dataset.kohya_layout import ShotSplit, build_shot_splits
from lora_pipeline.dataset.versions import (
    ManifestImage,
    build_manifest,
    dataset_fingerprint,
    load_manifest,
    write_dataset_version,
)
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.vision.faces import FaceDetector


@dataclass(frozen=True)
class DatasetRef:
    """What the downstream stages need to find a dataset version: its slug, hash and folder."""

    character: str
    version_hash: str
    relpath: str
    image_count: int
    created: bool


def approved_fingerprint(registry: Registry, character_slug: str) -> tuple[str, int]:
    """The hash the next dataset version of this character would have, and its image count."""
    with registry.session() as session:
        character = commands.get_character(session, character_slug)
        pairs = [(i.id, i.sha256) for i in queries.approved_images(session, character.id)]
    return dataset_fingerprint(character_slug, pairs), len(pairs)


def build_approved_dataset(registry: Registry, root: DataRoot, character_slug: str) -> DatasetRef:
    with registry.session() as session:
        character = commands.get_character(session, character_slug)
        images = [
            ManifestImage(i.id, i.sha256, i.path, i.width, i.height, i.origin, i.provenance or {})
            for i in queries.approved_images(session, character.id)
        ]
        manifest = build_manifest(character.slug, character.trigger_word, images)
        version_dir = write_dataset_version(root, manifest)
        relpath = root.relative(version_dir / "manifest.json")
        version, created = commands.record_dataset_version(
            session, character.id, manifest["version_hash"], manifest, relpath
        )
    return DatasetRef(
        character=character_slug,
        version_hash=version.version_hash,
        relpath=root.relative(version_dir),
        image_count=len(images),
        created=created,
    )


def caption_design(registry: Registry, root: DataRoot, dataset: DatasetRef) -> dict[str, str]:
    """Trigger word + design prompt for every image of the version."""
    version_dir = root.path(dataset.relpath)
    with registry.session() as session:
        design_prompt = commands.get_character(session, dataset.character).design_prompt
    return caption_dataset_design(version_dir, load_manifest(version_dir), design_prompt)


def split_shots(
    root: DataRoot,
    dataset: DatasetRef,
    captions: Mapping[str, str],
    detector: FaceDetector | None,
) -> ShotSplit:
    version_dir = root.path(dataset.relpath)
    out_dir = root.dir("kohya", dataset.character, dataset.version_hash)
    created_at = datetime.now(UTC).replace(microsecond=0).isoformat()
    return build_shot_splits(
        version_dir, load_manifest(version_dir), captions, out_dir, detector, created_at
    )


def training_examples(split_dir: Path) -> list[tuple[Path, str]]:
    """Every image of a kohya folder with the caption beside it."""
    pairs = []
    for image in sorted(split_dir.glob("*/*.png")):
        caption_file = image.with_suffix(".txt")
        caption = caption_file.read_text().strip() if caption_file.exists() else ""
        pairs.append((image, caption))
    return pairs
