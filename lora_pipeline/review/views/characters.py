"""The Characters tab: the cast, and the advisor's prompt suggestions to accept or dismiss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from lora_pipeline.registry import suggestions
from lora_pipeline.review import pages
from lora_pipeline.review.security import csrf_protected
from lora_pipeline.review.views.common import _context, _local_target, _text, render, wants_json
from lora_pipeline.review.views.state import states as pipeline_states


def characters_page(request: Request) -> Response:
    ctx = _context(request)
    with ctx.registry.session(readonly=True) as session:
        cast = pages.characters(session, ctx.settings.base_model)
    notice = None
    if request.query_params.get("accepted"):
        notice = "Suggestion accepted: the design prompt is updated for all future generations."
    return render(
        request, "characters.html", characters=cast, notice=notice, states=pipeline_states(request)
    )


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
