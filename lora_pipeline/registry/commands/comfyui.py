"""Commands on the files seen in the ComfyUI output folder."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from lora_pipeline.registry.commands._rows import _existing_after_race, _get, _try_insert
from lora_pipeline.registry.commands._validate import (
    _MAX_BIGINT,
    _int,
    _optional_text,
    _relative_path,
)
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
