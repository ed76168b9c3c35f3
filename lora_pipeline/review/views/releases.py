"""The Releases tab: releases with their evals, and the gate-guarded status changes."""

from __future__ import annotations

import re

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from lora_pipeline.errors import user_message
from lora_pipeline.evaluation import releases
from lora_pipeline.registry.errors import ConflictError, InvalidInputError
from lora_pipeline.registry.models import RELEASE_STATUSES
from lora_pipeline.review import pages
from lora_pipeline.review.security import csrf_protected, page_url
from lora_pipeline.review.views.common import _context, _find_file, _text, render, wants_json


def releases_page(request: Request) -> Response:
    params = request.query_params
    done, outcome = params.get("done", ""), params.get("outcome", "")
    demoted = params.get("demoted", "")
    notice = error = None
    # ASCII digits only: str.isdigit() and \d take "²" and "٣" too, which int() refuses.
    if re.fullmatch(r"[0-9]+", done) and outcome in RELEASE_STATUSES:
        others = demoted.split(",") if re.fullmatch(r"[0-9]+(,[0-9]+)*", demoted) else []
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
            # An unverified gate's override: the reason and who gives it (else refused).
            override_reason=_text(form, "override_reason") or None,
            reviewer=_text(form, "reviewer") or None,
            # Recorded on approval; a project that requires a licence refuses without one.
            licence=_text(form, "licence") or None,
        )
    except ConflictError as error:
        return _release_failed(request, character, 409, user_message(error))
    except InvalidInputError as error:
        return _release_failed(request, character, 400, user_message(error))
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


def eval_cell(request: Request) -> Response:
    """One cell of an eval grid at full size, from inside the data root only."""
    ctx = _context(request)
    eval_id, index = request.path_params["eval_id"], request.path_params["index"]
    with ctx.registry.session(readonly=True) as session:
        path = pages.eval_cell(session, ctx.root, eval_id, index)
    if path is None:
        raise HTTPException(404, f"no cell {index} in eval {eval_id}")
    return FileResponse(path)
