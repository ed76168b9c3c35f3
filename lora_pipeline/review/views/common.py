"""What every tab's pages and actions share: the app's context, rendering, form fields."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.templating import Jinja2Templates

from lora_pipeline.config import Settings
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry.db import Registry
from lora_pipeline.review.decoding import PixelBudget, Thumbnails
from lora_pipeline.review.pipeline_state import RunSource
from lora_pipeline.training.launch import TrainingSubmitter

Found = TypeVar("Found")


@dataclass
class ReviewContext:
    """What every request needs; one per app."""

    settings: Settings
    registry: Registry
    root: DataRoot
    templates: Jinja2Templates
    max_upload_bytes: int
    # Shared by every full decode the app does (uploaded images, thumbnails).
    decode_budget: PixelBudget
    thumbnails: Thumbnails
    # Stops a ComfyUI prompt when its job is cleared as stuck; None without ComfyUI.
    cancel_prompt: Callable[[str], object] | None = None
    # The Dagster runs (queued, running) for the pipeline state; None: registry and files only.
    runs: RunSource | None = None
    # Queues a training as `lora-pipeline train` does (handed over by `lora-pipeline review`,
    # since the app never imports Dagster); None: the Train tab cannot start one.
    submit_training: TrainingSubmitter | None = None
    # The Train tab's shot of each (face detector, picture), found once.
    shot_cache: dict[tuple[str, str], str] = field(default_factory=dict)


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


def _local_target(target: str, default: str = "/") -> str:
    """A redirect target inside this app only (no open redirect to another site)."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return default


def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def favicon(request: Request) -> Response:
    # Browsers ask for it on every page; "no content" keeps their consoles free of 404s.
    return Response(status_code=204)
