"""Tags and asset types on one or many images (seed 003), from the Approve and Gallery tabs.

The same command as `lora-pipeline image tag`: the tags land in each image's registry
provenance, where dataset selection (`train --tag/--tag-any/--asset-type`, the wizard's filters)
reads them.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from lora_pipeline.generation_settings import POSITIVE_WHOLE, parse_number
from lora_pipeline.registry import commands
from lora_pipeline.registry.errors import InvalidInputError
from lora_pipeline.review.security import csrf_protected
from lora_pipeline.review.views.common import _context, _local_target, _text, wants_json

# One form names at most a page of images (the Approve tab shows 200).
MAX_TAGGED_IMAGES = 500


def _tag_list(form: FormData, name: str) -> list[str]:
    """A field of comma-separated tags (a tag never holds a comma), blanks dropped."""
    return [tag.strip() for tag in _text(form, name).split(",") if tag.strip()]


def _image_ids(form: FormData) -> list[int]:
    values = [v for v in form.getlist("image_id") if isinstance(v, str)]
    if not values:
        raise InvalidInputError("choose at least one image to tag")
    if len(values) > MAX_TAGGED_IMAGES:
        raise InvalidInputError(f"tag at most {MAX_TAGGED_IMAGES} images at once")
    return list(dict.fromkeys(int(parse_number(v, "image id", POSITIVE_WHOLE)) for v in values))


@csrf_protected
async def tag_images_action(request: Request, form: FormData) -> Response:
    """Add and remove tags and set the asset type of the chosen images, all or none."""
    ctx = _context(request)
    image_ids = _image_ids(form)
    add, remove = _tag_list(form, "add"), _tag_list(form, "remove")
    asset_type = _text(form, "asset_type") or None
    if not (add or remove or asset_type):
        raise InvalidInputError("say what to change: tags to add or remove, or an asset type")

    def work() -> dict[int, list[str]]:
        with ctx.registry.session() as session:
            images = commands.tag_images(session, image_ids, add, remove, asset_type)
            return {image.id: commands.stored_tags(image) for image in images}

    tagged = await run_in_threadpool(work)
    if wants_json(request):
        return JSONResponse({"ok": True, "tags": {str(k): v for k, v in tagged.items()}})
    target = _local_target(_text(form, "next"), "/gallery")
    separator = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{separator}tagged={len(tagged)}", status_code=303)
