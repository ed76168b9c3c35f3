"""The Approve tab: the review queue and the approve/reject decisions."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy import func, select
from sqlalchemy.orm import aliased
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from lora_pipeline import actions
from lora_pipeline.errors import user_message
from lora_pipeline.registry import commands, suggestions
from lora_pipeline.registry.errors import ConflictError, InvalidInputError, NotFoundError
from lora_pipeline.registry.models import Character, Image
from lora_pipeline.review import pages
from lora_pipeline.review.security import csrf_protected, page_url
from lora_pipeline.review.views.common import (
    _context,
    _find_file,
    _local_target,
    _text,
    render,
    wants_json,
)
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
# The reviewer's name, asked once and kept by the browser: every decision records it.
REVIEWER_COOKIE = "lp_reviewer"
REVIEWER_COOKIE_AGE_S = 365 * 24 * 3600
NO_REVIEWER = (
    "a reviewer name is required: enter yours once at the top of the Approve tab "
    "(this browser remembers it)"
)


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
        reviewer=remembered_reviewer(request),
        needed=pages.MIN_APPROVED_IMAGES,
        here=page_url("/approve", **filters),
        # Where each character stands in the pipeline (kept current by review.js).
        states={
            slug: state
            for slug, state in pipeline_states(request).items()
            if not filters["character"] or slug == filters["character"]
        },
    )


def tagged_notice(request: Request) -> str | None:
    """The notice after a plain (no-script) tag form: how many images it tagged."""
    count = request.query_params.get("tagged", "")
    if count.isascii() and count.isdigit():
        return f"Tags saved on {int(count)} image(s)."
    return None


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
    notice = tagged_notice(request) or notice
    return _queue_page(request, filters, notice=notice)


@csrf_protected
async def approve_image(request: Request, form: FormData) -> Response:
    ctx = _context(request)
    image_id = request.path_params["image_id"]
    reviewer = decision_reviewer(request, form)

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
    reviewer = decision_reviewer(request, form)

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
    """Run a decision; a second reviewer gets 409 and the first reviewer's outcome. The page's
    script also gets the character's progress towards training."""
    ctx = _context(request)
    script = wants_json(request)
    timings: dict[str, float] = {}
    asked = time.perf_counter()

    def decide() -> tuple[str, dict[str, Any]]:
        # One trip to the thread pool for the decision and the progress: under 20 reviewers
        # each trip waits its turn for a thread and for the event loop again.
        started = time.perf_counter()
        timings["wait"] = started - asked
        try:
            message = work()
        finally:
            timings["decision"] = time.perf_counter() - started
        if not script:
            return message, {}
        started = time.perf_counter()
        progress = _progress(ctx, image_id)
        timings["progress"] = time.perf_counter() - started
        return message, progress

    response: Response
    try:
        if not decision_reviewer(request, form):
            raise InvalidInputError(NO_REVIEWER)
        message, progress = await run_in_threadpool(decide)
    except ConflictError as error:
        response = _decision_failed(request, form, 409, user_message(error))
    except InvalidInputError as error:
        response = _decision_failed(request, form, 400, user_message(error))
    else:
        response = _decided(request, form, image_id, outcome, message, progress)
    timings["route"] = time.perf_counter() - asked
    response.headers["server-timing"] = server_timing(timings)
    return response


def server_timing(timings: dict[str, float]) -> str:
    """A Server-Timing header: where a decision's time went (milliseconds), for the browser's
    network panel and the review benchmark."""
    return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in timings.items())


def _decided(
    request: Request,
    form: FormData,
    image_id: int,
    outcome: str,
    message: str,
    progress: dict[str, Any],
) -> Response:
    if wants_json(request):
        return JSONResponse(
            {"ok": True, "image_id": image_id, "status": outcome, "message": message, **progress}
        )
    filters = _filters(form)
    target = page_url("/approve", **filters, done=image_id, outcome=outcome)
    return RedirectResponse(target, status_code=303)


def _progress(ctx: Any, image_id: int) -> dict[str, Any]:
    """The decided image's character and its approved count, in one query: under 20
    reviewers every round trip waits for the interpreter again."""
    other = aliased(Image)  # the character's images, not the decided one
    approved = (
        select(func.count(other.id))
        .where(other.character_id == Character.id, other.status == "approved")
        .correlate(Character)
        .scalar_subquery()
    )
    query = (
        select(Character.slug, approved)
        .join(Image, Image.character_id == Character.id)
        .where(Image.id == image_id)
    )
    with ctx.registry.session(readonly=True) as session:
        row = session.execute(query).one_or_none()
    if row is None:
        raise NotFoundError(f"unknown image {image_id}")
    return {"character": row[0], "approved": row[1] or 0, "needed": pages.MIN_APPROVED_IMAGES}


def remembered_reviewer(request: Request) -> str:
    """The name this browser gave (its cookie), or "" before it gave one."""
    value = unquote(request.cookies.get(REVIEWER_COOKIE, ""))
    try:
        return commands.reviewer_name(value)
    except InvalidInputError:
        return ""  # no name yet, or a cookie no form of ours wrote


def decision_reviewer(request: Request, form: FormData) -> str:
    """Who decides: the form's reviewer field (scripts, `?reviewer=`), else the browser's."""
    return _text(form, "reviewer") or remembered_reviewer(request)


@csrf_protected
async def set_reviewer(request: Request, form: FormData) -> Response:
    """Remember the reviewer's name in this browser (asked once, before the first decision)."""
    name = commands.reviewer_name(form.get("reviewer", ""))
    response: Response
    if wants_json(request):
        response = JSONResponse({"ok": True, "reviewer": name})
    else:
        target = _local_target(_text(form, "next"), "/approve")
        response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        REVIEWER_COOKIE,
        quote(name, safe=""),
        max_age=REVIEWER_COOKIE_AGE_S,
        path="/",
        httponly=True,
        samesite="strict",
    )
    return response


def image_details(request: Request) -> Response:
    """The single-image view's data: the image, its metadata and tags, the rejections it
    answers and the character's approved images to compare it with."""
    ctx = _context(request)
    image_id = request.path_params["image_id"]
    with ctx.registry.session(readonly=True) as session:
        details = pages.image_details(session, ctx.settings.base_model, image_id)
    if details is None:
        raise HTTPException(404, f"no image {image_id}")
    for answer in details["answers"]:
        answer["categories"] = [CATEGORY_LABELS.get(c, c) for c in answer["categories"]]
    return JSONResponse(details, headers={"cache-control": "no-store"})


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
