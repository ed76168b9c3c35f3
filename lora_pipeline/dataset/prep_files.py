"""The JSON files of a shot split, in seed 002's formats, and their schemas.

- `shots.json`: file → shot_type, face_ratio, confidence, face_bbox;
- `metadata.json`: person, trigger_word, total_images, shot_distribution, top_concepts,
  created_at (the distribution lists `unknown` only when some image had no face);
- `concepts.json`: file → raw_caption, concepts, then one key per taxonomy category;
- `preview_manifest.json`: dataset (name, trigger, total_images) and one record per image;
- `dataset_manifest.json` (this project's addition): the version's manifest enriched with each
  image's caption, shot, tags and concepts, the subsets and the run's settings and warnings.
Every file is checked against its schema before it is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_pipeline.dataset.caption_strategies import CaptionSet
from lora_pipeline.dataset.schema import check_schema
from lora_pipeline.dataset.shots import SHOT_TYPES, ShotResult
from lora_pipeline.dataset.versions import PROVENANCE_SCHEMA, DatasetError

SHOTS_FILENAME = "shots.json"
METADATA_FILENAME = "metadata.json"
CONCEPTS_FILENAME = "concepts.json"
PREVIEW_FILENAME = "preview_manifest.json"
DATASET_MANIFEST_FILENAME = "dataset_manifest.json"
DATASET_MANIFEST_VERSION = 1


class PrepFileError(DatasetError):
    """A prep file would not follow its schema (a bug upstream, never written)."""


@dataclass(frozen=True)
class Placement:
    """Where one image of the version lands in the split, and what it says there."""

    entry: dict[str, Any]
    shot: ShotResult
    folder: str
    target_name: str
    caption: str

    @property
    def relpath(self) -> str:
        return f"{self.folder}/{self.target_name}"


_NUMBER_OR_NULL = {"type": ["number", "null"], "minimum": 0}
_BBOX = {"type": ["array", "null"], "items": {"type": "integer"}}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_SHOT = {"type": "string", "enum": list(SHOT_TYPES)}

SHOTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "required": ["shot_type", "face_ratio", "confidence", "face_bbox"],
        "additionalProperties": False,
        "properties": {
            "shot_type": _SHOT,
            "face_ratio": {**_NUMBER_OR_NULL, "maximum": 1},
            "confidence": _NUMBER_OR_NULL,
            "face_bbox": _BBOX,
        },
    },
}

_TOP_CONCEPT = {
    "type": "object",
    "required": ["concept", "count", "frequency"],
    "additionalProperties": False,
    "properties": {
        "concept": {"type": "string", "minLength": 1},
        "count": {"type": "integer", "minimum": 1},
        "frequency": {"type": "number", "minimum": 0, "maximum": 1},
    },
}

METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "person",
        "trigger_word",
        "total_images",
        "shot_distribution",
        "top_concepts",
        "created_at",
    ],
    "additionalProperties": False,
    "properties": {
        "person": {"type": "string", "minLength": 1},
        "trigger_word": {"type": "string", "minLength": 1},
        "total_images": {"type": "integer", "minimum": 0},
        "shot_distribution": {
            "type": "object",
            "required": ["close", "mid", "far"],
            "additionalProperties": False,
            "properties": {shot: {"type": "integer", "minimum": 0} for shot in SHOT_TYPES},
        },
        "top_concepts": {"type": "array", "items": _TOP_CONCEPT},
        "created_at": {"type": "string", "minLength": 1},
    },
}

CONCEPTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "required": ["raw_caption", "concepts"],
        "properties": {"raw_caption": {"type": "string"}, "concepts": _STRINGS},
        # One key per taxonomy category: a concept (single-valued) or a list of them.
        "additionalProperties": {"type": ["string", "null", "array"], "items": {"type": "string"}},
    },
}

PREVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["dataset", "images"],
    "additionalProperties": False,
    "properties": {
        "dataset": {
            "type": "object",
            "required": ["name", "trigger", "total_images"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "trigger": {"type": "string", "minLength": 1},
                "total_images": {"type": "integer", "minimum": 0},
            },
        },
        "images": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "filename",
                    "shot_type",
                    "shot_confidence",
                    "caption",
                    "concepts",
                    "pose",
                    "setting",
                ],
                "additionalProperties": False,
                "properties": {
                    "filename": {"type": "string", "minLength": 1},
                    "shot_type": _SHOT,
                    "shot_confidence": _NUMBER_OR_NULL,
                    "caption": {"type": "string", "minLength": 1},
                    "concepts": _STRINGS,
                    "pose": {"type": ["string", "null"]},
                    "setting": {"type": ["string", "null"]},
                },
            },
        },
    },
}

_SUBSET = {
    "type": "object",
    "required": ["shot_type", "folder", "images", "num_repeats", "shot_tag", "keep_tokens"],
    "additionalProperties": False,
    "properties": {
        "shot_type": _SHOT,
        "folder": {"type": "string", "minLength": 1},
        "images": {"type": "integer", "minimum": 1},
        "num_repeats": {"type": "integer", "minimum": 1},
        "shot_tag": {"type": ["string", "null"]},
        "keep_tokens": {"type": "integer", "minimum": 1},
    },
}

DATASET_MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "schema_version",
        "character",
        "person",
        "trigger_word",
        "version_hash",
        "provenance",
        "captions",
        "shots",
        "subsets",
        "images",
    ],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"type": "integer", "const": DATASET_MANIFEST_VERSION},
        "character": {"type": "string", "minLength": 1},
        "person": {"type": "string", "minLength": 1},
        "trigger_word": {"type": "string", "minLength": 1},
        "version_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "provenance": PROVENANCE_SCHEMA,
        "captions": {
            "type": "object",
            "required": ["strategy", "tagger", "captioner", "taxonomy", "absorbed_tags"],
            "additionalProperties": False,
            "properties": {
                "strategy": {"type": "string", "minLength": 1},
                "tagger": {"type": ["string", "null"]},
                "captioner": {"type": ["string", "null"]},
                "taxonomy": {"type": "string", "minLength": 1},
                "absorbed_tags": _STRINGS,
            },
        },
        "shots": {
            "type": "object",
            "required": ["face_detector", "note", "distribution", "warnings"],
            "additionalProperties": False,
            "properties": {
                "face_detector": {"type": ["string", "null"]},
                "note": {"type": "string"},
                "distribution": {"type": "object"},
                "warnings": _STRINGS,
            },
        },
        "subsets": {"type": "array", "items": _SUBSET},
        "images": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "image_id",
                    "sha256",
                    "origin",
                    "source_file",
                    "file",
                    "shot_type",
                    "face_ratio",
                    "confidence",
                    "face_bbox",
                    "caption",
                    "tags",
                    "concepts",
                    "provenance",
                ],
                "additionalProperties": False,
                "properties": {
                    "image_id": {"type": "integer", "minimum": 0},
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "origin": {"type": "string"},
                    "source_file": {"type": "string", "minLength": 1},
                    "file": {"type": "string", "minLength": 1},
                    "shot_type": _SHOT,
                    "face_ratio": _NUMBER_OR_NULL,
                    "confidence": _NUMBER_OR_NULL,
                    "face_bbox": _BBOX,
                    "caption": {"type": "string", "minLength": 1},
                    "tags": _STRINGS,
                    "concepts": _STRINGS,
                    "provenance": {"type": "object"},
                },
            },
        },
    },
}

SCHEMAS: dict[str, dict[str, Any]] = {
    SHOTS_FILENAME: SHOTS_SCHEMA,
    METADATA_FILENAME: METADATA_SCHEMA,
    CONCEPTS_FILENAME: CONCEPTS_SCHEMA,
    PREVIEW_FILENAME: PREVIEW_SCHEMA,
    DATASET_MANIFEST_FILENAME: DATASET_MANIFEST_SCHEMA,
}


def shots_file(placements: Sequence[Placement]) -> dict[str, Any]:
    return {
        p.target_name: {
            "shot_type": p.shot.shot_type,
            "face_ratio": p.shot.face_ratio,
            "confidence": p.shot.confidence,
            "face_bbox": p.shot.face_bbox,
        }
        for p in placements
    }


def metadata_file(
    person: str,
    trigger_word: str,
    distribution: Mapping[str, int],
    top_concepts: list[dict[str, Any]],
    created_at: str,
) -> dict[str, Any]:
    shown = {shot: distribution.get(shot, 0) for shot in ("close", "mid", "far")}
    if distribution.get("unknown"):
        shown["unknown"] = distribution["unknown"]
    return {
        "person": person,
        "trigger_word": trigger_word,
        "total_images": sum(distribution.values()),
        "shot_distribution": shown,
        "top_concepts": top_concepts,
        "created_at": created_at,
    }


def concepts_file(placements: Sequence[Placement], captions: CaptionSet) -> dict[str, Any]:
    concepts = {}
    for p in placements:
        image = captions.images[p.entry["file"]]
        concepts[p.target_name] = {"raw_caption": image.raw_caption, **image.concepts}
    return concepts


def preview_manifest(
    person: str, trigger_word: str, placements: Sequence[Placement], captions: CaptionSet
) -> dict[str, Any]:
    images = []
    for p in placements:
        concepts = captions.images[p.entry["file"]].concepts
        images.append(
            {
                "filename": p.target_name,
                "shot_type": p.shot.shot_type,
                "shot_confidence": p.shot.confidence,
                "caption": p.caption,
                "concepts": concepts["concepts"],
                "pose": concepts.get("pose"),
                "setting": concepts.get("setting"),
            }
        )
    return {
        "dataset": {"name": person, "trigger": trigger_word, "total_images": len(placements)},
        "images": images,
    }


def dataset_manifest(
    manifest: dict[str, Any],
    person: str,
    placements: Sequence[Placement],
    captions: CaptionSet,
    shots: dict[str, Any],
    subsets: list[dict[str, Any]],
) -> dict[str, Any]:
    """The version's manifest with what captions and shot splits learned about each image."""
    return {
        "schema_version": DATASET_MANIFEST_VERSION,
        "character": manifest["character"],
        "person": person,
        "trigger_word": manifest["trigger_word"],
        "version_hash": manifest["version_hash"],
        "provenance": _sorted_keys(manifest["provenance"]),
        "captions": {
            "strategy": captions.strategy,
            "tagger": captions.tagger,
            "captioner": captions.captioner,
            "taxonomy": captions.taxonomy,
            "absorbed_tags": captions.absorbed_tags,
        },
        "shots": shots,
        "subsets": subsets,
        "images": [_image_record(p, captions) for p in sorted(placements, key=_image_id)],
    }


def write_prep_file(folder: Path, name: str, value: dict[str, Any]) -> None:
    """Check `value` against the file's schema, then write it (indent 2, trailing newline)."""
    check_schema(value, SCHEMAS[name], name, PrepFileError)
    text = json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    (folder / name).write_text(text, encoding="utf-8")


def _image_id(placement: Placement) -> int:
    return placement.entry["image_id"]


def _image_record(p: Placement, captions: CaptionSet) -> dict[str, Any]:
    image = captions.images[p.entry["file"]]
    return {
        "image_id": p.entry["image_id"],
        "sha256": p.entry["sha256"],
        "origin": p.entry["origin"],
        "source_file": p.entry["file"],
        "file": p.relpath,
        "shot_type": p.shot.shot_type,
        "face_ratio": p.shot.face_ratio,
        "confidence": p.shot.confidence,
        "face_bbox": p.shot.face_bbox,
        "caption": p.caption,
        "tags": image.tags,
        "concepts": image.concepts["concepts"],
        "provenance": _sorted_keys(p.entry["provenance"]),
    }


def _sorted_keys(value: Any) -> Any:
    """Free-form JSON with its keys sorted, as manifest.json stores it: a manifest read back
    from disk and one built in memory then give the same bytes."""
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value
