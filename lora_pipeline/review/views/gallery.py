"""The Gallery tab: generated images and their settings."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from lora_pipeline.review import pages
from lora_pipeline.review.views.common import _context, render


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
