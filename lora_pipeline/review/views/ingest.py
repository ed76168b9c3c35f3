"""The Ingest tab: ingest requests from a URL or an upload."""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from lora_pipeline.media.uploads import store_upload
from lora_pipeline.registry import commands
from lora_pipeline.registry.errors import InvalidInputError
from lora_pipeline.review import pages
from lora_pipeline.review.security import csrf_protected, page_url
from lora_pipeline.review.views.common import (
    ReviewContext,
    _context,
    _float,
    _optional_int,
    _text,
    render,
    wants_json,
)


def ingest_page(request: Request) -> Response:
    ctx = _context(request)
    with ctx.registry.session(readonly=True) as session:
        projects, cast = pages.choices(session)
        sources = pages.recent_sources(session)
    created = request.query_params.get("created", "")
    notice = f"Ingest request {created} created." if created.isdigit() else None
    return render(
        request,
        "ingest.html",
        projects=projects,
        cast=cast,
        sources=sources,
        notice=notice,
        max_upload=ctx.max_upload_bytes,
    )


@dataclass(frozen=True)
class _IngestTarget:
    project: str
    character: str | None
    mode: str


def _ingest_target(ctx: ReviewContext, form: FormData) -> _IngestTarget:
    mode = _text(form, "mode", "single")
    with ctx.registry.session(readonly=True) as session:
        if mode == "single":
            slug = _text(form, "character")
            if not slug:
                raise InvalidInputError("single-character mode needs a character")
            character = commands.get_character(session, slug)
            return _IngestTarget(character.project.slug, character.slug, mode)
        if mode == "project":
            project = commands.get_project(session, _text(form, "project"))
            return _IngestTarget(project.slug, None, mode)
    raise InvalidInputError(f"invalid ingest mode {mode!r}: use single or project")


@csrf_protected
async def ingest_action(request: Request, form: FormData) -> Response:
    ctx = _context(request)
    fps = _float(_text(form, "fps", "1") or "1", "fps")
    max_frames = _optional_int(_text(form, "max_frames"), "max frames", minimum=1) or 100
    target = await run_in_threadpool(_ingest_target, ctx, form)
    upload = form.get("file")
    if isinstance(upload, UploadFile) and upload.filename:
        kind, uri = await run_in_threadpool(_store_upload, ctx, upload)
    else:
        kind, uri = "url", _text(form, "url")
        if not uri:
            raise InvalidInputError("give a video URL or choose a file to upload")

    def work() -> int:
        with ctx.registry.session() as session:
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
            return source.id

    source_id = await run_in_threadpool(work)
    if wants_json(request):
        return JSONResponse({"ok": True, "source_id": source_id, "kind": kind})
    return RedirectResponse(page_url("/ingest", created=source_id), status_code=303)


def _safe_name(filename: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename.replace("\\", "/")).name)
    return name.lstrip(".")[:100] or "upload"


def _store_upload(ctx: ReviewContext, upload: UploadFile) -> tuple[str, str]:
    """Copy the (already size-checked) upload into the data root through `store_upload`."""
    incoming = ctx.root.dir("uploads", "incoming")
    folder = Path(tempfile.mkdtemp(dir=incoming))
    try:
        path = folder / _safe_name(upload.filename or "")
        upload.file.seek(0)
        with path.open("wb") as handle:
            shutil.copyfileobj(upload.file, handle, length=1024 * 1024)
        stored = store_upload(path, ctx.root, max_bytes=ctx.max_upload_bytes)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return stored.kind, stored.relpath
