"""The review app's pages and actions.

Pages are plain functions (Starlette runs them in its thread pool, so the registry's blocking
calls never stall the event loop); actions are coroutines that parse the form, check its CSRF
token (`csrf_protected`) and then do their registry work in the thread pool. Every action
answers JSON to the page's script (`Accept: application/json`) and a redirect (or the page
with its error) to a plain form post, so the app works without JavaScript too.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.templating import Jinja2Templates

from lora_pipeline.config import Settings
from lora_pipeline.evaluation import releases
from lora_pipeline.generation.negatives import configured_negative_table, negative_terms_for
from lora_pipeline.generation.service import clear_stuck_jobs, request_generation
from lora_pipeline.media.store import DataRoot
from lora_pipeline.media.uploads import store_upload
from lora_pipeline.registry import commands, suggestions
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.errors import ConflictError, InvalidInputError
from lora_pipeline.registry.models import RELEASE_STATUSES
from lora_pipeline.review import pages
from lora_pipeline.review.security import csrf_protected, page_url

CATEGORY_LABELS = {
    "wrong_appearance": "Wrong appearance",
    "wrong_style": "Wrong style",
    "bad_quality": "Bad quality",
    "not_solo": "Not solo",
    "wrong_pose": "Wrong pose",
    "wrong_expression": "Wrong expression",
}
DEFAULT_STUCK_MINUTES = 10
MAX_STUCK_MINUTES = 7 * 24 * 60
OUTCOMES = ("approved", "rejected")
Found = TypeVar("Found")


@dataclass
class ReviewContext:
    """What every request needs; one per app."""

    settings: Settings
    registry: Registry
    root: DataRoot
    templates: Jinja2Templates
    max_upload_bytes: int
    # Stops a ComfyUI prompt when its job is cleared as stuck; None without ComfyUI.
    cancel_prompt: Callable[[str], object] | None = None


def _context(request: Request) -> ReviewContext:
    return request.app.state.review


def _find_file(request: Request, find: Callable[[Any, DataRoot, int], Found], key: str) -> Found:
    """`find(session, data root, the id in the path)` in a read-only session: the file
    lookups that serve only what a registry row points at inside the data root."""
    ctx = _context(request)
    with ctx.registry.session(readonly=True) as session:
        return find(session, ctx.root, request.path_params[key])


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def render(request: Request, name: str, status: int = 200, **values: Any) -> Response:
    values.setdefault("error", None)
    values.setdefault("notice", None)
    values["csrf_token"] = request.state.csrf_token
    values["page"] = name.removesuffix(".html")
    return _context(request).templates.TemplateResponse(request, name, values, status_code=status)


def _text(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name, default)
    return value.strip() if isinstance(value, str) else default


def _optional_int(value: str, what: str, minimum: int = 0, maximum: int = 2**63 - 1) -> int | None:
    if not value:
        return None
    if not re.fullmatch(r"[+-]?\d+", value):
        raise InvalidInputError(f"{what} must be a whole number, got {value!r}")
    number = int(value)
    if not minimum <= number <= maximum:
        raise InvalidInputError(f"{what} must be between {minimum} and {maximum}, got {number}")
    return number


def _float(value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise InvalidInputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InvalidInputError(f"{what} must be a finite number, got {value!r}")
    return number


def _local_target(target: str, default: str = "/") -> str:
    """A redirect target inside this app only (no open redirect to another site)."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return default


# --- characters ---------------------------------------------------------------------------------


def characters_page(request: Request) -> Response:
    ctx = _context(request)
    with ctx.registry.session(readonly=True) as session:
        cast = pages.characters(session, ctx.settings.base_model)
    notice = None
    if request.query_params.get("accepted"):
        notice = "Suggestion accepted: the design prompt is updated for all future generations."
    return render(request, "characters.html", characters=cast, notice=notice)


@csrf_protected
async def accept_suggestion(request: Request, form: FormData) -> Response:
    return await _close_suggestion(request, form, suggestions.accept_suggestion, "accepted")


@csrf_protected
async def dismiss_suggestion(request: Request, form: FormData) -> Response:
    return await _close_suggestion(request, form, suggestions.dismiss_suggestion, "dismissed")


async def _close_suggestion(
    request: Request, form: FormData, close: Callable[..., Any], outcome: str
) -> Response:
    ctx = _context(request)
    suggestion_id = request.path_params["suggestion_id"]

    def work() -> str:
        with ctx.registry.session() as session:
            suggestion = close(session, suggestion_id)
            return suggestion.suggested_prompt

    prompt = await run_in_threadpool(work)
    if wants_json(request):
        return JSONResponse({"ok": True, "status": outcome, "design_prompt": prompt})
    target = _local_target(_text(form, "next"), "/")
    joiner = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{joiner}{outcome}={suggestion_id}", status_code=303)


# --- approve queue ------------------------------------------------------------------------------


def _filters(source: Any) -> dict[str, str]:
    return {name: (source.get(name) or "").strip() for name in ("project", "character", "reviewer")}


def _queue_page(
    request: Request,
    filters: dict[str, str],
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
) -> Response:
    ctx = _context(request)
    with ctx.registry.session(readonly=True) as session:
        items = pages.approve_queue(
            session,
            ctx.settings.base_model,
            project=filters["project"] or None,
            character=filters["character"] or None,
        )
        projects, cast = pages.choices(session)
        shown = {item.character_slug for item in items}
        open_ones = [
            (slug, pages.SuggestionView.of(row))
            for slug, row in _suggestions_by_slug(session).items()
            if slug in shown
        ]
        total = pages.pending_total(session)
    return render(
        request,
        "approve.html",
        status=status,
        items=items,
        projects=projects,
        cast=cast,
        filters=filters,
        total=total,
        categories=CATEGORY_LABELS,
        suggestions=open_ones,
        error=error,
        notice=notice,
        here=page_url("/approve", **filters),
    )


def _suggestions_by_slug(session: Any) -> dict[str, Any]:
    from lora_pipeline.registry.models import Character

    by_id = suggestions.open_suggestions(session)
    return {session.get(Character, cid).slug: row for cid, row in by_id.items()}


def approve_page(request: Request) -> Response:
    filters = _filters(request.query_params)
    notice = None
    done, outcome = request.query_params.get("done", ""), request.query_params.get("outcome")
    if done.isdigit() and outcome in OUTCOMES:
        notice = f"Image {done} {outcome}."
    return _queue_page(request, filters, notice=notice)


@csrf_protected
async def approve_image(request: Request, form: FormData) -> Response:
    ctx = _context(request)
    image_id = request.path_params["image_id"]
    reviewer = _text(form, "reviewer")

    def work() -> str:
        with ctx.registry.session() as session:
            commands.approve_image(session, image_id, reviewer=reviewer)
        return f"Image {image_id} approved."

    return await _decide(request, form, image_id, "approved", work)


@csrf_protected
async def reject_image(request: Request, form: FormData) -> Response:
    ctx = _context(request)
    image_id = request.path_params["image_id"]
    categories = [c for c in form.getlist("category") if isinstance(c, str)]
    notes, edit = _text(form, "notes"), _text(form, "prompt_edit")
    reviewer = _text(form, "reviewer")

    def work() -> str:
        table = configured_negative_table(ctx.settings.home)
        with ctx.registry.session() as session:
            current = commands.get_image(session, image_id).character.design_prompt
            feedback = commands.reject_image(
                session,
                image_id,
                categories,
                notes=notes,
                # The edit box starts with the current prompt: unchanged means no edit.
                prompt_edit=edit if edit and edit != current.strip() else None,
                reviewer=reviewer,
                negative_terms=negative_terms_for(categories, table),
            )
            terms = ", ".join(feedback.negative_terms) or "none"
        return f"Image {image_id} rejected; the regeneration avoids: {terms}."

    return await _decide(request, form, image_id, "rejected", work)


async def _decide(
    request: Request, form: FormData, image_id: int, outcome: str, work: Callable[[], str]
) -> Response:
    """Run a decision; a second reviewer gets 409 and the first reviewer's outcome."""
    try:
        message = await run_in_threadpool(work)
    except ConflictError as error:
        return _decision_failed(request, form, 409, str(error))
    except InvalidInputError as error:
        return _decision_failed(request, form, 400, str(error))
    if wants_json(request):
        return JSONResponse(
            {"ok": True, "image_id": image_id, "status": outcome, "message": message}
        )
    filters = _filters(form)
    target = page_url("/approve", **filters, done=image_id, outcome=outcome)
    return RedirectResponse(target, status_code=303)


def _decision_failed(request: Request, form: FormData, status: int, message: str) -> Response:
    if wants_json(request):
        return JSONResponse({"ok": False, "error": message}, status_code=status)
    return _queue_page(request, _filters(form), status=status, error=message)


def image_file(request: Request) -> Response:
    """An image by its registry id, from inside the data root only."""
    path = _find_file(request, pages.image_path, "image_id")
    if path is None:
        raise HTTPException(404, f"no image {request.path_params['image_id']}")
    # Content-addressed files never change: the browser may keep them.
    return FileResponse(path, headers={"cache-control": "private, max-age=86400, immutable"})


# --- generate -----------------------------------------------------------------------------------


def generate_page(request: Request) -> Response:
    ctx = _context(request)
    with ctx.registry.session(readonly=True) as session:
        cast = pages.characters(session, ctx.settings.base_model)
        job_list = pages.jobs(session, ctx.root)
    params = request.query_params
    notice = None
    if params.get("requested", "").isdigit():
        notice = f"Generation job {params['requested']} requested; it starts within seconds."
    elif params.get("cleared", "").isdigit():
        notice = f"{params['cleared']} stuck job(s) marked failed"
        if params.get("stopped", "").isdigit():
            notice += f", {params['stopped']} stopped in ComfyUI"
        if params.get("unstopped", "").isdigit():
            notice += f", {params['unstopped']} could not be stopped in ComfyUI"
        notice += "."
    return render(
        request,
        "generate.html",
        characters=cast,
        jobs=job_list,
        selected=params.get("character", ""),
        stuck_minutes=DEFAULT_STUCK_MINUTES,
        notice=notice,
        comfyui=bool(ctx.settings.comfyui_url),
    )


def jobs_json(request: Request) -> Response:
    ctx = _context(request)
    with ctx.registry.session(readonly=True) as session:
        job_list = pages.jobs(session, ctx.root)
    return JSONResponse({"jobs": [job.as_json() for job in job_list]})


def job_output(request: Request) -> Response:
    """The file a job recorded as its output (a video clip), from videos/ of the data root."""
    found = _find_file(request, pages.job_output, "job_id")
    if found is None:
        raise HTTPException(404, f"job {request.path_params['job_id']} has no output file")
    path, media_type = found
    return FileResponse(path, media_type=media_type)


@csrf_protected
async def request_generation_action(request: Request, form: FormData) -> Response:
    ctx = _context(request)
    slug, kind = _text(form, "character"), _text(form, "kind", "image")
    seed = _optional_int(_text(form, "seed"), "seed")
    backend = "comfyui" if ctx.settings.comfyui_url else "diffusers"

    def work() -> int:
        with ctx.registry.session() as session:
            job = request_generation(
                session,
                slug,
                kind=kind,
                prompt_override=_text(form, "prompt") or None,
                negative_prompt=_text(form, "negative_prompt"),
                seed=seed,
                backend=backend,
            )
            return job.id

    job_id = await run_in_threadpool(work)
    if wants_json(request):
        return JSONResponse({"ok": True, "job_id": job_id, "status": "pending"})
    return RedirectResponse(page_url("/generate", requested=job_id), status_code=303)


@csrf_protected
async def clear_stuck(request: Request, form: FormData) -> Response:
    ctx = _context(request)
    minutes = _optional_int(_text(form, "minutes"), "minutes", minimum=1, maximum=MAX_STUCK_MINUTES)
    older_than = timedelta(minutes=minutes or DEFAULT_STUCK_MINUTES)
    cleared = await run_in_threadpool(clear_stuck_jobs, ctx.registry, older_than, ctx.cancel_prompt)
    if wants_json(request):
        return JSONResponse(
            {
                "ok": True,
                "failed": cleared.failed,
                "cancelled": cleared.cancelled,
                "cancel_errors": cleared.cancel_errors,
            }
        )
    target = page_url(
        "/generate",
        cleared=len(cleared.failed),
        stopped=len(cleared.cancelled) or None,
        unstopped=len(cleared.cancel_errors) or None,
    )
    return RedirectResponse(target, status_code=303)


# --- releases -----------------------------------------------------------------------------------


def releases_page(request: Request) -> Response:
    params = request.query_params
    done, outcome = params.get("done", ""), params.get("outcome", "")
    demoted = params.get("demoted", "")
    notice = error = None
    if done.isdigit() and outcome in RELEASE_STATUSES:
        others = demoted.split(",") if re.fullmatch(r"\d+(,\d+)*", demoted) else []
        notice = releases.describe(int(done), outcome, others)
        if params.get("card") == "stale":
            error = (
                "A changed release's model card could not be rewritten; the server log says why."
            )
    character = (params.get("character") or "").strip()
    return _releases_page(request, character, notice=notice, error=error)


def _releases_page(
    request: Request,
    character: str,
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
) -> Response:
    ctx = _context(request)
    with ctx.registry.session(readonly=True) as session:
        groups = pages.releases(session, ctx.root, character or None)
        _projects, cast = pages.choices(session)
    return render(
        request,
        "releases.html",
        status=status,
        groups=groups,
        cast=cast,
        character=character,
        actions=releases.ACTIONS,
        error=error,
        notice=notice,
    )


def releases_json(request: Request) -> Response:
    ctx = _context(request)
    character = (request.query_params.get("character") or "").strip()
    with ctx.registry.session(readonly=True) as session:
        groups = pages.releases(session, ctx.root, character or None)
    return JSONResponse(
        {
            "characters": [
                {
                    "slug": group.slug,
                    "project": group.project_slug,
                    "releases": [row.as_json() for row in group.releases],
                }
                for group in groups
            ]
        }
    )


@csrf_protected
async def release_action(request: Request, form: FormData) -> Response:
    """Approve, activate, reject or deactivate a release; a refused change (the gate, or a
    status that does not allow it) answers one message and changes nothing."""
    ctx = _context(request)
    release_id, name = request.path_params["release_id"], request.path_params["action"]
    if name not in releases.ACTIONS:
        raise HTTPException(404, f"no release action {name!r}")
    character = _text(form, "character")
    try:
        change = await run_in_threadpool(
            releases.change_release,
            ctx.registry,
            ctx.root,
            release_id,
            name,
            ctx.settings.comfyui_loras_dir,
        )
    except ConflictError as error:
        return _release_failed(request, character, 409, str(error))
    except InvalidInputError as error:
        return _release_failed(request, character, 400, str(error))
    if wants_json(request):
        return JSONResponse(
            {
                "ok": True,
                "release_id": release_id,
                "status": change.status,
                "demoted": list(change.demoted),
                "message": change.message,
                "card_errors": list(change.card_errors),
            }
        )
    target = page_url(
        "/releases",
        character=character,
        done=release_id,
        outcome=change.status,
        demoted=",".join(map(str, change.demoted)),
        card="stale" if change.card_errors else None,
    )
    return RedirectResponse(target, status_code=303)


def _release_failed(request: Request, character: str, status: int, message: str) -> Response:
    if wants_json(request):
        return JSONResponse({"ok": False, "error": message}, status_code=status)
    return _releases_page(request, character, status=status, error=message)


def eval_grid(request: Request) -> Response:
    """An eval's grid image by the eval's registry id, from inside the data root only."""
    path = _find_file(request, pages.eval_grid, "eval_id")
    if path is None:
        raise HTTPException(404, f"no grid image for eval {request.path_params['eval_id']}")
    return FileResponse(path)


# --- gallery ------------------------------------------------------------------------------------


def gallery_page(request: Request) -> Response:
    ctx = _context(request)
    with ctx.registry.session(readonly=True) as session:
        items = pages.gallery(session, ctx.root)
    return render(request, "gallery.html", items=items)


def gallery_view(request: Request) -> Response:
    ctx = _context(request)
    image_id = request.path_params["image_id"]
    with ctx.registry.session(readonly=True) as session:
        item = pages.gallery_item(session, ctx.root, image_id)
    if item is None:
        raise HTTPException(404, f"no image {image_id}")
    return render(request, "view.html", item=item)


# --- ingest -------------------------------------------------------------------------------------


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


# --- health ---------------------------------------------------------------------------------------


def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def favicon(request: Request) -> Response:
    # Browsers ask for it on every page; "no content" keeps their consoles free of 404s.
    return Response(status_code=204)
