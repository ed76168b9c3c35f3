"""The use cases people start from the CLI and the review app, one function each.

Requesting an ingest, requesting a generation, and deciding an image (approve or reject) are
done here once, so the terminal, the browser and the sensors that pick the requests up agree on
what each one means. Deciding a release is `evaluation.releases.change_release`, already shared
the same way. No Dagster here: the sensors run what these functions record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_pipeline.generation.negatives import configured_negative_table, negative_terms_for
from lora_pipeline.generation.service import request_generation as record_generation_request
from lora_pipeline.media.store import DataRoot
from lora_pipeline.media.uploads import (
    MAX_UPLOAD_BYTES,
    StoredUpload,
    discard_upload,
    store_upload,
    sweep_incoming,
)
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.commands.sources import retry_source
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.errors import InvalidInputError, RegistryError

URL_SCHEMES = ("http://", "https://")


@dataclass(frozen=True)
class IngestTarget:
    """Whose frames an ingest makes: one character (single mode) or a whole project."""

    project: str
    character: str | None
    mode: str


@dataclass(frozen=True)
class IngestRequest:
    source_id: int
    kind: str
    mode: str


def is_url(text: str) -> bool:
    """Whether an ingest argument is a URL (any case: `HTTP://...` is one), not a file."""
    return text.strip().lower().startswith(URL_SCHEMES)


def ingest_target(registry: Registry, character: str | None, project: str | None) -> IngestTarget:
    """Single mode for a character (its project implied), project mode for a project."""
    if (character is None) == (project is None):
        raise InvalidInputError("give a character (single mode) or a project (project mode)")
    with registry.session(readonly=True) as session:
        if character is not None:
            row = commands.get_character(session, character)
            return IngestTarget(row.project.slug, row.slug, "single")
        return IngestTarget(commands.get_project(session, project or "").slug, None, "project")


def request_ingest(
    registry: Registry,
    root: DataRoot,
    target: IngestTarget,
    *,
    url: str | None = None,
    file: Path | None = None,
    fps: float = 1.0,
    max_frames: int = 100,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> IngestRequest:
    """Record an ingest request of a URL or of a local file (stored in the data root first);
    the ingest sensor runs it. A refused request leaves no stored upload behind."""
    if file is not None:
        sweep_incoming(root)  # what crashed uploads left
        stored = store_upload(file, root, max_bytes=max_upload_bytes)
        try:
            return _record_ingest(registry, target, stored.kind, stored.relpath, fps, max_frames)
        except BaseException:
            _discard_unused(registry, root, stored)
            raise
    if url and url.strip():
        return _record_ingest(registry, target, "url", url.strip(), fps, max_frames)
    raise InvalidInputError("give a video URL or choose a file to upload")


def _discard_unused(registry: Registry, root: DataRoot, stored: StoredUpload) -> None:
    """Remove a refused upload's stored file, unless a request of the same content (made at
    the same moment) uses it."""
    with registry.session(readonly=True) as session:
        if queries.source_uses(session, stored.relpath):
            return
    discard_upload(root, stored)


def _record_ingest(
    registry: Registry, target: IngestTarget, kind: str, uri: str, fps: float, max_frames: int
) -> IngestRequest:
    with registry.session() as session:
        source = commands.create_source(
            session,
            target.project,
            kind,
            uri,
            character_slug=target.character,
            mode=target.mode,
            fps=fps,
            max_frames=max_frames,
        )
        return IngestRequest(source.id, kind, target.mode)


def retry_ingest(registry: Registry, source_id: int) -> IngestRequest:
    """Put a failed source back to pending; the ingest sensor runs it again (its frames
    recorded before the failure are kept, and not recorded twice)."""
    with registry.session() as session:
        source = retry_source(session, source_id)
        return IngestRequest(source.id, source.kind, source.mode)


def request_generation(
    registry: Registry,
    character: str,
    *,
    comfyui: bool,
    kind: str = "image",
    prompt: str | None = None,
    negative_prompt: str = "",
    seed: int | None = None,
    requested_by: str = "review",
    count: int = 1,
) -> list[int]:
    """Record `count` pending generation jobs, each with its own seed (the generation request
    sensor runs them); drawn by ComfyUI when one is configured. Returns the job ids."""
    with registry.session() as session:
        jobs = record_generation_request(
            session,
            character,
            kind=kind,
            prompt_override=prompt or None,
            negative_prompt=negative_prompt,
            seed=seed,
            backend="comfyui" if comfyui else "diffusers",
            requested_by=requested_by,
            count=count,
        )
        return [job.id for job in jobs]


def approve_images(
    registry: Registry, image_ids: Sequence[int], reviewer: str = ""
) -> dict[int, RegistryError]:
    """Approve pending images, each in its own transaction: one that is refused (unknown,
    already decided) leaves the others approved. Returns each refused id with its error, in
    the order given; an id named twice is decided once."""
    refused: dict[int, RegistryError] = {}
    for image_id in dict.fromkeys(image_ids):
        try:
            with registry.session() as session:
                commands.approve_image(session, image_id, reviewer=reviewer)
        except RegistryError as error:
            refused[image_id] = error
    return refused


def reject_image(
    registry: Registry,
    image_id: int,
    categories: Sequence[str],
    *,
    notes: str = "",
    prompt_edit: str | None = None,
    reviewer: str = "",
    home: Path | None = None,
) -> list[str]:
    """Reject a pending image; its categories become the negative terms of the regeneration
    the rejection sensor starts (the configured table's). A prompt edit equal to the current
    design prompt is no edit. Returns the negative terms."""
    table = configured_negative_table(home)
    with registry.session() as session:
        current = commands.get_image(session, image_id).character.design_prompt
        edit = (prompt_edit or "").strip()
        feedback = commands.reject_image(
            session,
            image_id,
            categories,
            notes=notes,
            prompt_edit=edit if edit and edit != current.strip() else None,
            reviewer=reviewer,
            negative_terms=negative_terms_for(categories, table),
        )
        return list(feedback.negative_terms)
