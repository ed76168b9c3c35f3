"""The Generate tab: requesting images or clips, the job list, clearing stuck jobs."""

from __future__ import annotations

from datetime import timedelta

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from lora_pipeline import actions
from lora_pipeline.generation.service import (
    DEFAULT_STUCK_MINUTES,
    STUCK_MINUTES,
    clear_stuck_jobs,
)
from lora_pipeline.generation_settings import LIMITS, parse_optional_number
from lora_pipeline.review import pages
from lora_pipeline.review.security import csrf_protected, page_url
from lora_pipeline.review.views.common import (
    _context,
    _find_file,
    _text,
    render,
    wants_json,
)


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
    seed = parse_optional_number(_text(form, "seed"), "seed", LIMITS["seed"])
    [job_id] = await run_in_threadpool(
        lambda: actions.request_generation(
            ctx.registry,
            slug,
            comfyui=bool(ctx.settings.comfyui_url),
            kind=kind,
            prompt=_text(form, "prompt") or None,
            negative_prompt=_text(form, "negative_prompt"),
            seed=seed,
        )
    )
    if wants_json(request):
        return JSONResponse({"ok": True, "job_id": job_id, "status": "pending"})
    return RedirectResponse(page_url("/generate", requested=job_id), status_code=303)


@csrf_protected
async def clear_stuck(request: Request, form: FormData) -> Response:
    ctx = _context(request)
    minutes = parse_optional_number(_text(form, "minutes"), "minutes", STUCK_MINUTES)
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
