"""Immutable dataset versions: a manifest of approved images and a folder named by its hash.

The version hash depends only on the character slug and the (image id, sha256) pairs, so a
sensor can compute it from the registry alone and know whether a new version exists without
touching any file. The folder `datasets/<slug>/<hash>/` is built in a temporary folder and
published with one `os.replace`, so a reader never sees half a version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lora_pipeline.dataset.schema import check_schema
from lora_pipeline.errors import PipelineError
from lora_pipeline.files import atomic_folder
from lora_pipeline.media.store import DataRoot, sha256_file

SCHEMA_VERSION = 1
MANIFEST_FILENAME = "manifest.json"
IMAGES_DIRNAME = "images"
DATASETS_DIRNAME = "datasets"

_SHA256_PATTERN = "^[0-9a-f]{64}$"
# Slugs become folder and file names, so they must be path-safe on every OS.
_SLUG_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_FILE_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})


class DatasetError(PipelineError, ValueError):
    """Base class of the dataset package: `str(error)` is one line fit to show to a user."""


class ManifestError(DatasetError):
    """A manifest is malformed, or the files on disk do not match it."""


@dataclass(frozen=True)
class ManifestImage:
    """One approved image as the registry knows it; `path` is relative to the data root."""

    image_id: int
    sha256: str
    path: str
    width: int
    height: int
    origin: str
    provenance: dict[str, Any] = field(default_factory=dict)


_IMAGE_ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "image_id",
        "sha256",
        "path",
        "width",
        "height",
        "origin",
        "provenance",
        "file",
    ],
    "additionalProperties": False,
    "properties": {
        "image_id": {"type": "integer", "minimum": 0},
        "sha256": {"type": "string", "pattern": _SHA256_PATTERN},
        "path": {"type": "string", "minLength": 1},
        "width": {"type": "integer", "minimum": 1},
        "height": {"type": "integer", "minimum": 1},
        "origin": {"type": "string", "minLength": 1},
        "provenance": {"type": "object"},
        "file": {"type": "string", "pattern": _FILE_PATTERN},
    },
}

PROVENANCE_FIELDS = ("source", "author", "license", "url", "notes")
TAG_MATCHES = ("all", "any")

SELECTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "tags", "match"],
    "additionalProperties": False,
    "properties": {
        "status": {"type": "string", "const": "approved"},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 200}},
        "match": {"type": "string", "enum": list(TAG_MATCHES)},
    },
}

# Dataset-level provenance (seed 003's --provenance-* options) and the rule that chose the images.
PROVENANCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "source": {"type": "string", "minLength": 1, "maxLength": 500},
        "author": {"type": "string", "minLength": 1, "maxLength": 500},
        "license": {"type": "string", "minLength": 1, "maxLength": 500},
        "url": {"type": "string", "pattern": r"https?://[^\s]+", "maxLength": 2000},
        "notes": {"type": "string", "minLength": 1, "maxLength": 5000},
        "selection": SELECTION_SCHEMA,
    },
}

MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "lora_pipeline dataset version manifest",
    "type": "object",
    "required": [
        "schema_version",
        "character",
        "trigger_word",
        "version_hash",
        "images",
        "provenance",
    ],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"type": "integer", "const": SCHEMA_VERSION},
        "character": {"type": "string", "pattern": _SLUG_PATTERN},
        # Captions are comma-separated, so a trigger with a comma or a line break would split.
        "trigger_word": {"type": "string", "pattern": r"^[^,\s](?:[^,\n\r]*[^,\s])?$"},
        "version_hash": {"type": "string", "pattern": _SHA256_PATTERN},
        "images": {"type": "array", "items": _IMAGE_ENTRY_SCHEMA},
        "provenance": PROVENANCE_SCHEMA,
    },
}


def dataset_fingerprint(character_slug: str, images: Iterable[tuple[int, str]]) -> str:
    """The dataset version hash: sha256 of the canonical JSON of the slug and sorted pairs."""
    _check_slug(character_slug)
    pairs = sorted((_check_image_id(image_id), _check_sha256(sha)) for image_id, sha in images)
    ids = [image_id for image_id, _ in pairs]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise ManifestError(f"image ids appear more than once in the dataset: {duplicates}")
    payload = {"character": character_slug, "images": [list(pair) for pair in pairs]}
    return hashlib.sha256(_canonical_compact(payload)).hexdigest()


def build_manifest(
    character_slug: str,
    trigger_word: str,
    images: Sequence[ManifestImage],
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a dataset version; the same approved set gives the same manifest."""
    ordered = sorted(images, key=lambda image: image.image_id)
    version_hash = dataset_fingerprint(
        character_slug, ((image.image_id, image.sha256) for image in ordered)
    )
    entries = [
        {
            "image_id": image.image_id,
            "sha256": image.sha256,
            "path": image.path,
            "width": image.width,
            "height": image.height,
            "origin": image.origin,
            "provenance": dict(image.provenance),
            "file": f"{character_slug}_{index:04d}{_image_suffix(image.path)}",
        }
        for index, image in enumerate(ordered, start=1)
    ]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "character": character_slug,
        "trigger_word": trigger_word,
        "version_hash": version_hash,
        "images": entries,
        "provenance": dict(provenance or {}),
    }
    validate_manifest(manifest)
    return manifest


def validate_manifest(manifest: Any) -> None:
    """Raise ManifestError unless `manifest` follows MANIFEST_SCHEMA and is self-consistent."""
    check_schema(manifest, MANIFEST_SCHEMA, "manifest", ManifestError)
    try:
        _canonical_compact(manifest)
    except (TypeError, ValueError) as error:
        raise ManifestError(f"manifest is not plain JSON data: {error}") from None
    images = manifest["images"]
    ids = [entry["image_id"] for entry in images]
    if ids != sorted(set(ids)):
        raise ManifestError("manifest images must be sorted by image_id, each id once")
    files = [entry["file"] for entry in images]
    if len(set(files)) != len(files):
        raise ManifestError("manifest images must have distinct file names")
    for entry in images:
        _check_relative_path(entry["path"], entry["image_id"])
    expected = dataset_fingerprint(
        manifest["character"], ((entry["image_id"], entry["sha256"]) for entry in images)
    )
    if manifest["version_hash"] != expected:
        raise ManifestError(
            f"manifest version_hash {manifest['version_hash']} does not match its images "
            f"(expected {expected})"
        )


def manifest_json(manifest: dict[str, Any]) -> str:
    """The exact text of manifest.json: sorted keys, indent 2, trailing newline."""
    return json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def version_dir_for(root: DataRoot, manifest: dict[str, Any]) -> Path:
    """Where a manifest's version lives: `<root>/datasets/<slug>/<hash>`."""
    return root.path(f"{DATASETS_DIRNAME}/{manifest['character']}/{manifest['version_hash']}")


def write_dataset_version(root: DataRoot, manifest: dict[str, Any]) -> Path:
    """Publish `datasets/<slug>/<hash>/` (manifest.json + images/), or verify the existing one."""
    validate_manifest(manifest)
    final_dir = version_dir_for(root, manifest)
    if final_dir.exists():
        verify_dataset_version(final_dir, _published_manifest(final_dir, manifest))
        return final_dir
    with atomic_folder(final_dir, replace=False) as staging:
        _fill_version_dir(root, manifest, staging)
    # Another writer may have published the same version first; theirs must equal ours.
    verify_dataset_version(final_dir, _published_manifest(final_dir, manifest))
    return final_dir


def _published_manifest(version_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest of an existing version, which must match `manifest` but for provenance.

    A version is immutable: the provenance written when it was first built stays, even when a
    later build of the same images is given other provenance notes.
    """
    published = load_manifest(version_dir)
    if _without_provenance(published) != _without_provenance(manifest):
        raise ManifestError(
            f"{version_dir / MANIFEST_FILENAME} differs from the manifest of this version"
        )
    return published


def _without_provenance(manifest: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in manifest.items() if key != "provenance"}


def verify_dataset_version(version_dir: Path, manifest: dict[str, Any]) -> None:
    """Raise ManifestError unless the folder holds exactly this manifest and its images."""
    manifest_path = version_dir / MANIFEST_FILENAME
    if not manifest_path.is_file():
        raise ManifestError(f"dataset version {version_dir} has no {MANIFEST_FILENAME}")
    if manifest_path.read_text(encoding="utf-8") != manifest_json(manifest):
        raise ManifestError(f"{manifest_path} differs from the manifest of this version")
    images_dir = version_dir / IMAGES_DIRNAME
    present = {p.name for p in images_dir.iterdir()} if images_dir.is_dir() else set()
    extra = sorted(present - {entry["file"] for entry in manifest["images"]})
    if extra:
        raise ManifestError(f"dataset version {version_dir} holds unexpected images: {extra}")
    for entry in manifest["images"]:
        _verify_image_file(images_dir / entry["file"], entry)


def load_manifest(version_dir: Path) -> dict[str, Any]:
    """Read and validate the manifest.json of a dataset version folder."""
    manifest_path = Path(version_dir) / MANIFEST_FILENAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST_FILENAME} in {version_dir}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"cannot read {manifest_path}: {error}") from None
    validate_manifest(manifest)
    if Path(version_dir).name != manifest["version_hash"]:
        raise ManifestError(
            f"{version_dir} is not named after its version hash {manifest['version_hash']}"
        )
    return manifest


def _fill_version_dir(root: DataRoot, manifest: dict[str, Any], staging: Path) -> None:
    images_dir = staging / IMAGES_DIRNAME
    images_dir.mkdir(parents=True)
    for entry in manifest["images"]:
        source = _source_path(root, entry)
        target = images_dir / entry["file"]
        _link_or_copy(source, target)
        # Hash the published file itself: with a copy, that is what training will read.
        _verify_image_file(target, entry)
    (staging / MANIFEST_FILENAME).write_text(manifest_json(manifest), encoding="utf-8")


def _source_path(root: DataRoot, entry: dict[str, Any]) -> Path:
    try:
        source = root.path(entry["path"])
    except ValueError as error:
        raise ManifestError(
            f"image {entry['image_id']} has an unsafe path {entry['path']!r}: {error}"
        ) from None
    if not source.is_file():
        raise ManifestError(
            f"image {entry['image_id']} is missing: no file at {entry['path']} in the data root"
        )
    return source


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        # Different file systems or no hardlink support: a real copy keeps the version whole.
        shutil.copyfile(source, target)


def _verify_image_file(path: Path, entry: dict[str, Any]) -> None:
    if not path.is_file():
        raise ManifestError(f"image {entry['image_id']} ({entry['file']}) is missing at {path}")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ManifestError(
            f"image {entry['image_id']} ({entry['path']}) has sha256 {actual}, "
            f"but the manifest says {entry['sha256']}"
        )


def _canonical_compact(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _image_suffix(path: str) -> str:
    suffix = PurePosixPath(path).suffix.lower()
    return suffix if suffix in _IMAGE_SUFFIXES else ".png"


def _check_slug(slug: Any) -> str:
    if not isinstance(slug, str) or not re.fullmatch(_SLUG_PATTERN, slug):
        raise ManifestError(
            f"character slug {slug!r} is not path-safe (letters, digits, '_', '-', '.')"
        )
    return slug


def _check_image_id(image_id: Any) -> int:
    if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id < 0:
        raise ManifestError(f"image id {image_id!r} is not a non-negative integer")
    return image_id


def _check_sha256(sha: Any) -> str:
    if not isinstance(sha, str) or not re.fullmatch(_SHA256_PATTERN, sha):
        raise ManifestError(f"{sha!r} is not a lowercase hex sha256")
    return sha


def _check_relative_path(path: str, image_id: int) -> None:
    pure = PurePosixPath(path)
    if pure.is_absolute() or "\\" in path or ".." in pure.parts:
        raise ManifestError(f"image {image_id} path {path!r} must be relative to the data root")
