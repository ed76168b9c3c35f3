"""The Ingest tab: ingest requests from a URL or an upload."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from lora_pipeline import actions
from lora_pipeline.generation_settings import (
    ANY_NUMBER,
    POSITIVE_WHOLE,
    parse_number,
    parse_optional_number,
)
from lora_pipeline.registry.errors import InvalidInputError
from lora_pipeline.review import pages
from lora_pipeline.review.decoding import header_pixels
from lora_pipeline.review.security import csrf_protected, page_url
from lora_pipeline.review.views.common import (
    ReviewContext,
    _context,
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
    retried = request.query_params.get("retried", "")
    notice = f"Ingest request {created} created." if created.isdigit() else None
    if retried.isdigit():
        notice = f"Ingest request {retried} queued again; the ingest sensor runs it next."
    return render(
        request,
        "ingest.html",
        projects=projects,
        cast=cast,
        sources=sources,
        notice=notice,
        max_upload=ctx.max_upload_bytes,
    )


def _ingest_target(ctx: ReviewContext, form: FormData) -> actions.IngestTarget:
    mode = _text(form, "mode", "single")
    if mode == "single":
        slug = _text(form, "character")
        if not slug:
            raise InvalidInputError("single-character mode needs a character")
        return actions.ingest_target(ctx.registry, slug, None)
    if mode == "project":
        return actions.ingest_target(ctx.registry, None, _text(form, "project"))
    raise InvalidInputError(f"invalid ingest mode {mode!r}: use single or project")


@csrf_protected
async def ingest_action(request: Request, form: FormData) -> Response:
    ctx = _context(request)
    fps = parse_number(_text(form, "fps", "1") or "1", "fps", ANY_NUMBER)
    max_frames = (
        parse_optional_number(_text(form, "max_frames"), "max frames", POSITIVE_WHOLE) or 100
    )
    target = await run_in_threadpool(_ingest_target, ctx, form)
    upload = form.get("file")
    if isinstance(upload, UploadFile) and upload.filename:
        created = await run_in_threadpool(_request_upload, ctx, target, upload, fps, max_frames)
    else:
        url = _text(form, "url")
        created = await run_in_threadpool(
            lambda: actions.request_ingest(
                ctx.registry, ctx.root, target, url=url, fps=fps, max_frames=max_frames
            )
        )
    if wants_json(request):
        return JSONResponse({"ok": True, "source_id": created.source_id, "kind": created.kind})
    return RedirectResponse(page_url("/ingest", created=created.source_id), status_code=303)


@csrf_protected
async def retry_ingest_action(request: Request, form: FormData) -> Response:
    """The Retry button of a failed source: what `lora-pipeline ingest retry SOURCE` does."""
    ctx = _context(request)
    source_id = request.path_params["source_id"]
    retried = await run_in_threadpool(actions.retry_ingest, ctx.registry, source_id)
    if wants_json(request):
        return JSONResponse({"ok": True, "source_id": retried.source_id, "state": "pending"})
    return RedirectResponse(page_url("/ingest", retried=retried.source_id), status_code=303)


def _safe_name(filename: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename.replace("\\", "/")).name)
    return name.lstrip(".")[:100] or "upload"


def _request_upload(
    ctx: ReviewContext,
    target: actions.IngestTarget,
    upload: UploadFile,
    fps: float,
    max_frames: int,
) -> actions.IngestRequest:
    """Copy the (already size-checked) upload to a private folder of the data root, and
    request its ingest (which stores it through `store_upload`)."""
    incoming = ctx.root.dir("uploads", "incoming")
    folder = Path(tempfile.mkdtemp(dir=incoming))
    try:
        path = folder / _safe_name(upload.filename or "")
        upload.file.seek(0)
        with path.open("wb") as handle:
            shutil.copyfileobj(upload.file, handle, length=1024 * 1024)
        # An image is decoded in full to be checked and stored: wait for the decode budget
        # (its size read from the header). A video is read by ffmpeg, another process.
        pixels = header_pixels(path)
        with ctx.decode_budget.decoding(pixels) if pixels else contextlib.nullcontext():
            return actions.request_ingest(
                ctx.registry,
                ctx.root,
                target,
                file=path,
                fps=fps,
                max_frames=max_frames,
                max_upload_bytes=ctx.max_upload_bytes,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
