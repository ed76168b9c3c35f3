"""New files of the ComfyUI output folder become ingest requests, each file once, ever.

A file whose name starts with a character's slug or trigger word becomes a single-mode source
of that character. Otherwise the file goes to a project (named by the file, the configured
default, or the only project there is) in project mode, where identification decides. A file
that fits no project is remembered with a note and not looked at again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from lora_pipeline.media.comfyui_outputs import (
    CharacterName,
    OutputFile,
    match_character,
    match_project,
    scan_output_folder,
)
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry

Log = Callable[[str], None]
# Files registered per scan: a backlog of thousands is taken in slices, oldest first.
SCAN_LIMIT = 500


@dataclass
class ScanResult:
    source_ids: list[int] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Cast:
    characters: list[CharacterName]
    project_of: dict[str, str]  # character slug -> project slug
    projects: list[str]


def register_new_outputs(
    registry: Registry,
    folder: Path,
    default_project: str | None,
    log: Log,
    limit: int = SCAN_LIMIT,
) -> ScanResult:
    """Record the folder's new files and create a source for each one that fits a project."""
    with registry.session(readonly=True) as session:
        seen = queries.seen_comfyui_outputs(session)
    files = scan_output_folder(folder, seen, limit=limit)
    result = ScanResult()
    if not files:
        return result
    with registry.session() as session:
        cast = _cast(session)
        for output in files:
            _register(session, output, cast, default_project, result)
    if result.source_ids:
        log(f"ComfyUI output: {len(result.source_ids)} new files to ingest")
    if result.unmatched:
        log(
            f"ComfyUI output: {len(result.unmatched)} files match no character or project, "
            f"e.g. {result.unmatched[0]} (set LORA_PIPELINE_COMFYUI_PROJECT)"
        )
    return result


def _cast(session: Session) -> _Cast:
    characters = queries.list_characters(session)
    return _Cast(
        [CharacterName(c.slug, c.trigger_word) for c in characters],
        {c.slug: c.project.slug for c in characters},
        [p.slug for p in queries.list_projects(session)],
    )


def _project_for(relpath: str, cast: _Cast, default_project: str | None) -> str | None:
    named = match_project(relpath, cast.projects)
    if named is not None:
        return named
    if default_project in cast.projects:
        return default_project
    return cast.projects[0] if len(cast.projects) == 1 else None


def _register(
    session: Session,
    output: OutputFile,
    cast: _Cast,
    default_project: str | None,
    result: ScanResult,
) -> None:
    row, created = commands.record_comfyui_output(
        session, output.relpath, output.size, output.mtime_ns
    )
    if not created:
        return  # another scan took it
    character = match_character(output.relpath, cast.characters)
    if character is not None:
        source = commands.create_source(
            session,
            cast.project_of[character],
            "comfyui_output",
            output.relpath,
            character_slug=character,
            max_frames=1,
        )
    else:
        project = _project_for(output.relpath, cast, default_project)
        if project is None:
            row.note = "no character or project matched the file name"
            result.unmatched.append(output.relpath)
            return
        source = commands.create_source(
            session, project, "comfyui_output", output.relpath, mode="project", max_frames=1
        )
    row.source_id = source.id
    session.flush()
    result.source_ids.append(source.id)
