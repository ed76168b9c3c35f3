"""The Gallery tab: generated images and their settings, and the ComfyUI output files that
matched no character, each with "ingest into character …"."""

from __future__ import annotations

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.models import Character, Image
from lora_pipeline.review import pages
from lora_pipeline.review.security import csrf_protected
from lora_pipeline.review.views.approve import tagged_notice
from lora_pipeline.review.views.common import _context, _text, render, wants_json
from lora_pipeline.review.why_assigned import why_assigned


def gallery_page(request: Request) -> Response:
    ctx = _context(request)
    with ctx.registry.session(readonly=True) as session:
        items = pages.gallery(session, ctx.root)
        outputs = [(row.id, row.relpath) for row in queries.unassigned_comfyui_outputs(session)]
        cast = list(session.execute(select(Character.slug, Character.name)).tuples())
    notice = None
    if request.query_params.get("ingesting"):
        notice = "Queued for ingest: the ComfyUI output sensor takes it within a minute."
    notice = tagged_notice(request) or notice
    return render(
        request, "gallery.html", items=items, outputs=outputs, cast=sorted(cast), notice=notice
    )


def gallery_view(request: Request) -> Response:
    ctx = _context(request)
    image_id = request.path_params["image_id"]
    with ctx.registry.session(readonly=True) as session:
        item = pages.gallery_item(session, ctx.root, image_id)
        image = session.get(Image, image_id)
        why = why_assigned(image.provenance) if image is not None else None
    if item is None:
        raise HTTPException(404, f"no image {image_id}")
    return render(request, "view.html", item=item, why=why, notice=tagged_notice(request))


@csrf_protected
async def ingest_output_action(request: Request, form: FormData) -> Response:
    """Ingest an unmatched ComfyUI output file into the chosen character's dataset."""
    ctx = _context(request)
    output_id, slug = request.path_params["output_id"], _text(form, "character")

    def work() -> int:
        with ctx.registry.session() as session:
            return commands.assign_comfyui_output(session, output_id, slug).id

    source_id = await run_in_threadpool(work)
    if wants_json(request):
        return JSONResponse({"ok": True, "source_id": source_id, "character": slug})
    return RedirectResponse(f"/gallery?ingesting={source_id}", status_code=303)
