"""The Approve tab: the review queue and the approve/reject decisions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from lora_pipeline import actions
from lora_pipeline.errors import user_message
from lora_pipeline.registry import suggestions
from lora_pipeline.registry.errors import ConflictError, InvalidInputError
from lora_pipeline.review import pages
from lora_pipeline.review.security import csrf_protected, page_url
from lora_pipeline.review.views.common import _context, _find_file, _text, render, wants_json
from lora_pipeline.review.views.state import states as pipeline_states

CATEGORY_LABELS = {
    "wrong_appearance": "Wrong appearance",
    "wrong_style": "Wrong style",
    "bad_quality": "Bad quality",
    "not_solo": "Not solo",
    "wrong_pose": "Wrong pose",
    "wrong_expression": "Wrong expression",
}
OUTCOMES = ("approved", "rejected")
IMMUTABLE = {"cache-control": "private, max-age=86400, immutable"}


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
        # Where each character stands in the pipeline (kept current by review.js).
        states={
            slug: state
            for slug, state in pipeline_states(request).items()
            if not filters["character"] or slug == filters["character"]
        },
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
        refused = actions.approve_images(ctx.registry, [image_id], reviewer)
        if image_id in refused:
            raise refused[image_id]  # its type picks the answer: 404 unknown, 409 decided
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
        # The edit box starts with the current prompt: unchanged means no edit (actions says so).
        terms = actions.reject_image(
            ctx.registry,
            image_id,
            categories,
            notes=notes,
            prompt_edit=edit,
            reviewer=reviewer,
            home=ctx.settings.home,
        )
        return f"Image {image_id} rejected; the regeneration avoids: {', '.join(terms) or 'none'}."

    return await _decide(request, form, image_id, "rejected", work)


async def _decide(
    request: Request, form: FormData, image_id: int, outcome: str, work: Callable[[], str]
) -> Response:
    """Run a decision; a second reviewer gets 409 and the first reviewer's outcome."""
    try:
        message = await run_in_threadpool(work)
    except ConflictError as error:
        return _decision_failed(request, form, 409, user_message(error))
    except InvalidInputError as error:
        return _decision_failed(request, form, 400, user_message(error))
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
    return FileResponse(path, headers=IMMUTABLE)


def image_thumbnail(request: Request) -> Response:
    """A registry image at most 1024 px a side: made once (under the app's decode budget),
    then served from the data root's thumbs/."""
    found = _find_file(request, pages.image_source, "image_id")
    if found is None:
        raise HTTPException(404, f"no image {request.path_params['image_id']}")
    path, sha256 = found
    thumbnail = _context(request).thumbnails.path(path, sha256)
    return FileResponse(thumbnail, media_type="image/jpeg", headers=IMMUTABLE)
