"""The dataset stages over the registry: approved images → version → captions → shot splits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lora_pipeline.dataset.caption_strategies import (
    DEFAULT_TAG_BLACKLIST,
    CaptionPlan,
    CaptionSet,
    Tagger,
    caption_dataset,
    parse_strategy,
)
from lora_pipeline.dataset.captions import caption_dataset_design
from lora_pipeline.dataset.concepts import Taxonomy, load_taxonomy
from lora_pipeline.dataset.kohya_layout import ShotSplit, SplitOptions, build_shot_splits
from lora_pipeline.dataset.quality import ImageScan, scan_images
from lora_pipeline.dataset.selection import DatasetSelection, dataset_provenance, select_images
from lora_pipeline.dataset.versions import (
    MANIFEST_FILENAME,
    ManifestImage,
    build_manifest,
    dataset_fingerprint,
    load_manifest,
    write_dataset_version,
)
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.training.defaults import detect_base_model_version
from lora_pipeline.vision.captioner import Captioner
from lora_pipeline.vision.faces import FaceDetector

KOHYA_DIRNAME = "kohya"
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})


@dataclass(frozen=True)
class DatasetRef:
    """What the downstream stages need to find a dataset version: its slug, hash and folder."""

    character: str
    version_hash: str
    relpath: str
    image_count: int
    created: bool


@dataclass(frozen=True)
class CharacterInfo:
    slug: str
    name: str
    project: str
    trigger_word: str
    design_prompt: str


def approved_fingerprint(registry: Registry, character_slug: str) -> tuple[str, int]:
    """The hash the next dataset version of this character would have, and its image count."""
    with registry.session() as session:
        character = commands.get_character(session, character_slug)
        pairs = [(i.id, i.sha256) for i in queries.approved_images(session, character.id)]
    return dataset_fingerprint(character_slug, pairs), len(pairs)


def build_approved_dataset(
    registry: Registry,
    root: DataRoot,
    character_slug: str,
    selection: DatasetSelection | None = None,
    provenance: Mapping[str, str | None] | None = None,
    run_id: str | None = None,
) -> DatasetRef:
    """Publish the version of the approved images the selection accepts, and record it (with
    the Dagster run building it).

    An existing version (same images) is reused as it is, provenance included.
    """
    selection = selection or DatasetSelection()
    with registry.session() as session:
        character = commands.get_character(session, character_slug)
        images = [
            ManifestImage(i.id, i.sha256, i.path, i.width, i.height, i.origin, i.provenance or {})
            for i in queries.approved_images(session, character.id)
        ]
        chosen = select_images(images, selection)
        manifest = build_manifest(
            character.slug,
            character.trigger_word,
            chosen,
            dataset_provenance(selection, provenance),
        )
        version_dir = write_dataset_version(root, manifest)
        relpath = root.relative(version_dir / MANIFEST_FILENAME)
        version, created = commands.record_dataset_version(
            session,
            character.id,
            manifest["version_hash"],
            load_manifest(version_dir),
            relpath,
            run_id=run_id,
        )
    return DatasetRef(
        character=character_slug,
        version_hash=version.version_hash,
        relpath=root.relative(version_dir),
        image_count=len(chosen),
        created=created,
    )


def character_info(registry: Registry, character_slug: str) -> CharacterInfo:
    with registry.session() as session:
        character = commands.get_character(session, character_slug)
        return CharacterInfo(
            slug=character.slug,
            name=character.name,
            project=character.project.slug,
            trigger_word=character.trigger_word,
            design_prompt=character.design_prompt,
        )


def scan_dataset(root: DataRoot, dataset: DatasetRef) -> tuple[dict, list[ImageScan]]:
    """The version's manifest and one decode of each image, for the quality gates."""
    version_dir = root.path(dataset.relpath)
    manifest = load_manifest(version_dir)
    return manifest, scan_images(version_dir, manifest)


def caption_design(registry: Registry, root: DataRoot, dataset: DatasetRef) -> dict[str, str]:
    """Trigger word + design prompt for every image of the version."""
    version_dir = root.path(dataset.relpath)
    with registry.session() as session:
        design_prompt = commands.get_character(session, dataset.character).design_prompt
    return caption_dataset_design(version_dir, load_manifest(version_dir), design_prompt)


def caption_version(
    registry: Registry,
    root: DataRoot,
    dataset: DatasetRef,
    *,
    strategy: str | None = None,
    tagger: Tagger | None = None,
    captioner: Captioner | None = None,
    taxonomy: Taxonomy | None = None,
    blacklist: Sequence[str] = DEFAULT_TAG_BLACKLIST,
    include_character_tags: bool = False,
) -> CaptionSet:
    """Caption the version with a strategy (`auto`: design, plus tags when a tagger exists)."""
    version_dir = root.path(dataset.relpath)
    info = character_info(registry, dataset.character)
    plan = CaptionPlan(
        strategy=parse_strategy(strategy, tagger_available=tagger is not None),
        design_prompt=info.design_prompt,
        tagger=tagger,
        captioner=captioner,
        taxonomy=taxonomy,
        blacklist=blacklist,
        include_character_tags=include_character_tags,
    )
    return caption_dataset(version_dir, load_manifest(version_dir), plan)


def taxonomy_for_project(configured: str | Path | None, project_slug: str) -> Taxonomy:
    """The configured taxonomy: a JSON file, or a folder of `<project slug>.json` files (the
    packaged default for projects without one); the default when nothing is configured."""
    if not configured:
        return load_taxonomy()
    path = Path(configured).expanduser()
    if path.is_dir():
        own = path / f"{project_slug}.json"
        return load_taxonomy(own) if own.is_file() else load_taxonomy()
    return load_taxonomy(path)


def split_shots(
    root: DataRoot,
    dataset: DatasetRef,
    captions: Mapping[str, str],
    detector: FaceDetector | None,
    *,
    caption_set: CaptionSet | None = None,
    person: str | None = None,
    base_model: str | None = None,
) -> ShotSplit:
    """The close/mid/far kohya layout of the version at `kohya/<slug>/<hash>/`."""
    version_dir = root.path(dataset.relpath)
    out_dir = root.dir(KOHYA_DIRNAME, dataset.character, dataset.version_hash)
    created_at = datetime.now(UTC).replace(microsecond=0).isoformat()
    options = SplitOptions(
        person=person,
        base_model=base_model,
        base_model_version=detect_base_model_version(base_model),
    )
    return build_shot_splits(
        version_dir,
        load_manifest(version_dir),
        captions,
        out_dir,
        detector,
        created_at,
        caption_set=caption_set,
        options=options,
    )


def training_examples(split_dir: Path) -> list[tuple[Path, str]]:
    """Every image of a kohya folder with the caption beside it."""
    pairs = []
    images = (p for p in Path(split_dir).glob("*/*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    for image in sorted(images):
        caption_file = image.with_suffix(".txt")
        caption = caption_file.read_text().strip() if caption_file.exists() else ""
        pairs.append((image, caption))
    return pairs
