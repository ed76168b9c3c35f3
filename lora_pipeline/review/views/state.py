"""Pipeline state of every character as JSON, polled by the Characters and Approve tabs so
that queued, running, paused and finished work shows without a reload."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from lora_pipeline.errors import first_line
from lora_pipeline.review import pipeline_state
from lora_pipeline.review.views.common import _context
from lora_pipeline.training.status import read_status, status_path


def states(request: Request) -> dict[str, dict[str, Any]]:
    """Every character's state now (the Dagster runs only when the app was given a source)."""
    ctx = _context(request)
    runs: list = []
    if ctx.runs is not None:
        try:
            runs = list(ctx.runs())
        # The instance may be unreachable; the page still shows what the registry knows.
        except Exception as error:  # noqa: BLE001
            request.state.runs_error = first_line(error)
    with ctx.registry.session(readonly=True) as session:
        return pipeline_state.character_states(session, ctx.settings, runs)


def state_json(request: Request) -> Response:
    body = {"characters": states(request), "dagster_ui": _context(request).settings.dagster_ui_url}
    error = getattr(request.state, "runs_error", None)
    if error:
        body["runs_error"] = error
    return JSONResponse(body, headers={"cache-control": "no-store"})


def training_sample(request: Request) -> Response:
    """The latest sample image of a character's training, from inside the data root only."""
    ctx = _context(request)
    slug = request.path_params["slug"]
    # A slug is letters, digits and hyphens: nothing else may build a path.
    safe = slug.replace("-", "").isalnum()
    status = read_status(status_path(ctx.root.root, slug)) if safe else None
    path = pipeline_state.sample_file(ctx.root, status)
    if path is None:
        raise HTTPException(404, f"no training sample of {slug!r}")
    return FileResponse(path, headers={"cache-control": "no-store"})
