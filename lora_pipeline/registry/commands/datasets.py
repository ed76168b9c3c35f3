"""Commands on dataset versions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lora_pipeline.registry.commands._rows import _existing_after_race, _get, _try_insert
from lora_pipeline.registry.commands._validate import (
    _VERSION_HASH,
    _json,
    _optional_text,
    _relative_path,
)
from lora_pipeline.registry.errors import InvalidInputError
from lora_pipeline.registry.models import Character, DatasetVersion


def record_dataset_version(
    session: Session,
    character_id: int,
    version_hash: str,
    manifest: dict[str, Any],
    manifest_path: str,
    run_id: str | None = None,
) -> tuple[DatasetVersion, bool]:
    """Record an immutable dataset version built by the Dagster run `run_id`; the same hash
    twice gives the first row (and the run that first built it) and False."""
    character = _get(session, Character, character_id, "character")
    if not isinstance(version_hash, str) or not _VERSION_HASH.fullmatch(version_hash):
        raise InvalidInputError(
            f"invalid version hash {version_hash!r}: expected 8 to 64 lower-case hex digits"
        )
    _json(manifest, "manifest", dict)
    images = manifest.get("images")
    if not isinstance(images, list):
        raise InvalidInputError("manifest must have an 'images' list")
    version = DatasetVersion(
        character_id=character.id,
        version_hash=version_hash,
        image_count=len(images),
        manifest_path=_relative_path(manifest_path, "manifest path"),
        manifest=manifest,
        run_id=_optional_text(run_id, "run id", 64),
    )
    lookup = select(DatasetVersion).where(
        DatasetVersion.character_id == character.id, DatasetVersion.version_hash == version_hash
    )
    existing = session.scalar(lookup)
    if existing is not None:
        return existing, False
    if _try_insert(session, version):
        return version, True
    what = f"dataset version {version_hash[:12]} of {character.slug!r}"
    return _existing_after_race(session, lookup, what), False
