"""The Echo Brain tab (seed 000 §7): chat about the production, optionally with a character's
design prompt and project as context, and Enhance Prompt (suggestions and the memories behind
them). An accepted suggestion becomes the character's design prompt through the same
suggestion commands as the rejection flow's advisor."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from lora_pipeline.generation.echo_brain import EchoBrainClient, EchoBrainError
from lora_pipeline.registry import commands, suggestions
from lora_pipeline.registry.models import Character
from lora_pipeline.review.security import csrf_protected
from lora_pipeline.review.views.common import _context, _text, render, wants_json

ADVISOR_NAME = "echo_brain"


def _client(request: Request) -> EchoBrainClient | None:
    url = _context(request).settings.echo_brain_url
    return EchoBrainClient(url) if url else None


def _cast(request: Request) -> list[tuple[str, str]]:
    with _context(request).registry.session(readonly=True) as session:
        rows = session.execute(select(Character.slug, Character.name).order_by(Character.slug))
        return [(slug, name) for slug, name in rows.tuples()]


def _character_context(request: Request, slug: str) -> dict[str, Any]:
    """What Echo Brain is told about the chosen character (nothing when none is chosen)."""
    if not slug:
        return {}
    with _context(request).registry.session(readonly=True) as session:
        character = commands.get_character(session, slug)
        return {
            "character": character.name,
            "slug": character.slug,
            "design_prompt": character.design_prompt,
            "project": character.project.name,
            "style_prompt": character.project.style_prompt,
        }


async def _status(client: EchoBrainClient | None) -> dict[str, str]:
    """Online / offline (with the URL it tried and why) / not configured."""
    if client is None:
        return {"state": "not configured", "url": "", "detail": "set LORA_PIPELINE_ECHO_BRAIN_URL"}
    try:
        await run_in_threadpool(client.check_health)
    except EchoBrainError as error:
        return {"state": "offline", "url": client.health_url, "detail": str(error)}
    return {"state": "online", "url": client.health_url, "detail": ""}


async def _page(request: Request, status: int = 200, **values: Any) -> Response:
    client = _client(request)
    values.setdefault("character", request.query_params.get("character", ""))
    for name in ("mode", "text", "answer"):
        values.setdefault(name, None)
    accepted = request.query_params.get("accepted")
    if accepted:
        values.setdefault("notice", f"Design prompt of {accepted} updated from Echo Brain.")
    return render(
        request,
        "echo_brain.html",
        status=status,
        echo=await _status(client),
        cast=await run_in_threadpool(_cast, request),
        **values,
    )


async def echo_brain_page(request: Request) -> Response:
    return await _page(request)


async def _ask(request: Request, form: FormData, mode: str) -> Response:
    """Chat or enhance: the answer, or the one-line reason there is none, on the page."""
    client = _client(request)
    slug, text = _text(form, "character"), _text(form, "text")
    values: dict[str, Any] = {"mode": mode, "character": slug, "text": text}
    if client is None:
        return await _page(request, 503, error="Echo Brain is not configured", **values)
    context = await run_in_threadpool(_character_context, request, slug)
    call = client.chat if mode == "chat" else client.enhance
    try:
        values["answer"] = await run_in_threadpool(call, text, context)
    except EchoBrainError as error:
        return await _page(request, 502, error=str(error), **values)
    return await _page(request, **values)


@csrf_protected
async def echo_brain_chat(request: Request, form: FormData) -> Response:
    return await _ask(request, form, "chat")


@csrf_protected
async def echo_brain_enhance(request: Request, form: FormData) -> Response:
    return await _ask(request, form, "enhance")


@csrf_protected
async def echo_brain_accept(request: Request, form: FormData) -> Response:
    """Make a suggestion the character's design prompt: recorded as an Echo Brain suggestion
    and accepted in one transaction, as accepting the advisor's suggestion does."""
    ctx = _context(request)
    slug, prompt = _text(form, "character"), _text(form, "prompt")
    rationale = _text(form, "rationale")

    def work() -> None:
        with ctx.registry.session() as session:
            character = commands.get_character(session, slug)
            row = suggestions.add_prompt_suggestion(
                session, character.id, prompt, rationale, ADVISOR_NAME
            )
            suggestions.accept_suggestion(session, row.id)

    await run_in_threadpool(work)
    if wants_json(request):
        return JSONResponse({"ok": True, "character": slug, "design_prompt": prompt})
    return RedirectResponse(f"/echo-brain?character={slug}&accepted={slug}", status_code=303)
