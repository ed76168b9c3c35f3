"""Commands on the files seen in the ComfyUI output folder."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lora_pipeline.registry.commands._rows import (
    _existing_after_race,
    _get,
    _try_insert,
    _updated_rows,
)
from lora_pipeline.registry.commands._validate import (
    _MAX_BIGINT,
    _int,
    _optional_text,
    _relative_path,
)
from lora_pipeline.registry.commands.characters import get_character
from lora_pipeline.registry.commands.sources import create_source
from lora_pipeline.registry.errors import ConflictError
from lora_pipeline.registry.models import ComfyuiOutputFile, Source


def record_comfyui_output(
    session: Session,
    relpath: str,
    size: int,
    mtime_ns: int,
    source_id: int | None = None,
    note: str | None = None,
) -> tuple[ComfyuiOutputFile, bool]:
    """Remember a file of the ComfyUI output folder; the same file twice gives the first row
    and False, so that two scans racing record (and ingest) it once."""
    if source_id is not None:
        source_id = _get(session, Source, source_id, "source").id
    relpath = _relative_path(relpath, "ComfyUI output path")
    row = ComfyuiOutputFile(
        relpath=relpath,
        size=_int(size, "size", maximum=_MAX_BIGINT),
        mtime_ns=_int(mtime_ns, "mtime_ns", maximum=_MAX_BIGINT),
        source_id=source_id,
        note=_optional_text(note, "note"),
    )
    lookup = select(ComfyuiOutputFile).where(
        ComfyuiOutputFile.relpath == relpath,
        ComfyuiOutputFile.size == row.size,
        ComfyuiOutputFile.mtime_ns == row.mtime_ns,
    )
    existing = session.scalar(lookup)
    if existing is not None:
        return existing, False
    if _try_insert(session, row):
        return row, True
    return _existing_after_race(session, lookup, f"ComfyUI output {relpath}"), False


def assign_comfyui_output(session: Session, output_id: int, character_slug: str) -> Source:
    """Ingest a remembered output file that matched no character into `character_slug`'s
    dataset (a single-mode source, like a file named after the character); once only."""
    row = _get(session, ComfyuiOutputFile, output_id, "ComfyUI output file")
    character = get_character(session, character_slug)
    source = create_source(
        session,
        character.project.slug,
        "comfyui_output",
        row.relpath,
        character_slug=character.slug,
        max_frames=1,
    )
    claim = (
        update(ComfyuiOutputFile)
        .where(ComfyuiOutputFile.id == row.id, ComfyuiOutputFile.source_id.is_(None))
        .values(source_id=source.id, note=None)
    )
    if _updated_rows(session, claim) != 1:
        # Assigned meanwhile (another reviewer, or a rescan): roll this source back with it.
        raise ConflictError(f"ComfyUI output {row.relpath} is already being ingested")
    return source
