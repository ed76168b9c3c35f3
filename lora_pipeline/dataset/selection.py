"""Which approved images make a dataset version, and the provenance recorded with it.

Seed 003's selection rule: approved images only, optionally filtered by tags, all of them
(the default) or any of them. An image's tags are the `tags` of its registry provenance (a list
of strings, or a mapping written as `key:value`) plus `origin:<origin>` (frame, generated,
upload…), so `origin:generated` selects generated images. Tags compare case-insensitively.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lora_pipeline.dataset.schema import check_schema
from lora_pipeline.dataset.versions import (
    PROVENANCE_FIELDS,
    PROVENANCE_SCHEMA,
    TAG_MATCHES,
    DatasetError,
    ManifestImage,
)


class SelectionError(DatasetError):
    """A selection rule or provenance field that cannot be used."""


@dataclass(frozen=True)
class DatasetSelection:
    tags: tuple[str, ...] = ()
    match: str = "all"

    def __post_init__(self) -> None:
        if self.match not in TAG_MATCHES:
            raise SelectionError(f"tag match must be one of {TAG_MATCHES}, got {self.match!r}")
        cleaned = []
        for tag in self.tags:
            if not isinstance(tag, str) or not tag.strip():
                raise SelectionError(f"selection tags must be non-empty text, got {tag!r}")
            cleaned.append(tag.strip())
        # Sorted and distinct: the same rule always records the same way in the manifest.
        object.__setattr__(self, "tags", tuple(sorted(set(cleaned), key=str.casefold)))

    def record(self) -> dict[str, Any]:
        return {"status": "approved", "tags": list(self.tags), "match": self.match}

    def accepts(self, tags: frozenset[str]) -> bool:
        if not self.tags:
            return True
        wanted = [tag.casefold() for tag in self.tags]
        found = [tag in tags for tag in wanted]
        return all(found) if self.match == "all" else any(found)


def image_tags(provenance: Mapping[str, Any], origin: str) -> frozenset[str]:
    """The tags a selection rule sees on one image (case-folded)."""
    raw = provenance.get("tags") if isinstance(provenance, Mapping) else None
    if isinstance(raw, Mapping):
        tags = [f"{key}:{value}" for key, value in raw.items()]
    elif isinstance(raw, list | tuple):
        tags = [str(tag) for tag in raw]
    else:
        tags = []
    tags.append(f"origin:{origin}")
    return frozenset(tag.strip().casefold() for tag in tags if str(tag).strip())


def select_images(
    images: Sequence[ManifestImage], selection: DatasetSelection
) -> list[ManifestImage]:
    """The approved images the rule accepts, in the order given."""
    return [
        image for image in images if selection.accepts(image_tags(image.provenance, image.origin))
    ]


def dataset_provenance(
    selection: DatasetSelection, fields: Mapping[str, str | None] | None = None
) -> dict[str, Any]:
    """The manifest's provenance: the given fields (blank ones dropped) and the selection rule."""
    fields = dict(fields or {})
    unknown = sorted(set(fields) - set(PROVENANCE_FIELDS))
    if unknown:
        raise SelectionError(f"unknown provenance field(s) {unknown}; use {PROVENANCE_FIELDS}")
    provenance: dict[str, Any] = {}
    for key, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise SelectionError(f"provenance {key} must be text, got {type(value).__name__}")
        if value and value.strip():
            provenance[key] = value.strip()
    provenance["selection"] = selection.record()
    check_schema(provenance, PROVENANCE_SCHEMA, "provenance", SelectionError)
    return provenance
