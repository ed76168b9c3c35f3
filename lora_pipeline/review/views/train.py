"""The Train tab (`/train`): seed 003's guided wizard, from checkpoint to an approved release.

The page and `/train/plan.json` (what its script polls as choices change) show every step of
`training_plan.plan_training`; `POST /train` queues the run through the app's `submit_training`,
the same helper `lora-pipeline train` uses, then the page follows it: the pipeline state (polled
from /state.json like the other tabs), and once trained the eval grid with approve / activate
(posted to the Releases tab's routes).
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from lora_pipeline.errors import PipelineError, user_message
from lora_pipeline.evaluation import releases
from lora_pipeline.registry import commands
from lora_pipeline.registry.errors import NotFoundError
from lora_pipeline.review import pages
from lora_pipeline.review.security import csrf_protected, page_url
from lora_pipeline.review.training_plan import (
    CAPTION_STRATEGIES,
    STEPS,
    WizardChoice,
    WizardPlan,
    estimate_text,
    plan_training,
)
from lora_pipeline.review.views.approve import NO_REVIEWER, decision_reviewer
from lora_pipeline.review.views.common import _context, render, wants_json
from lora_pipeline.review.views.state import states

NO_SUBMITTER = (
    "this review app cannot queue runs: it was started without the Dagster instance; start it "
    "with `lora-pipeline review`, or queue the run with `lora-pipeline train`"
)


def started_by(reviewer: str) -> str:
    """Who started a run from the Train tab, as the CLI's `cli:<login>` says it for `train`."""
    return f"review:{reviewer}"


def _plan(request: Request, choice: WizardChoice) -> WizardPlan:
    ctx = _context(request)
    return plan_training(ctx.settings, ctx.registry, choice, ctx.shot_cache)


def train_page(request: Request) -> Response:
    choice = WizardChoice.from_form(request.query_params)
    run_id = request.query_params.get("run", "")
    notice = f"Training queued as run {run_id}; its progress shows below." if run_id else None
    return _train_page(request, choice, notice=notice)


def _train_page(
    request: Request,
    choice: WizardChoice,
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
) -> Response:
    plan = _plan(request, choice)
    return render(
        request,
        "train.html",
        status=status,
        plan=plan,
        steps=STEPS,
        strategies=CAPTION_STRATEGIES,
        estimate_text=estimate_text,
        state=states(request).get(choice.character) if choice.character else None,
        release=_latest_release(request, choice.character),
        actions=releases.ACTIONS,
        error=error,
        notice=notice,
    )


def _latest_release(request: Request, slug: str) -> Any:
    if not slug:
        return None
    ctx = _context(request)
    with ctx.registry.session(readonly=True) as session:
        try:
            (group,) = pages.releases(session, ctx.root, slug)
        except NotFoundError:
            return None
    return group.releases[0] if group.releases else None


def train_plan_json(request: Request) -> Response:
    plan = _plan(request, WizardChoice.from_form(request.query_params))
    return JSONResponse(plan.as_json(), headers={"cache-control": "no-store"})


@csrf_protected
async def start_training(request: Request, form: FormData) -> Response:
    """Queue the wizard's training; a step that is not ready refuses in one line."""
    ctx = _context(request)
    choice = WizardChoice.from_form(form)
    plan = await run_in_threadpool(_plan, request, choice)
    problem = _first_problem(plan)
    status = 400
    if problem is None and ctx.submit_training is None:
        problem, status = NO_SUBMITTER, 503
    # The run records who started it, like every decision records its reviewer.
    reviewer = decision_reviewer(request, form)
    if problem is None and not reviewer:
        problem = NO_REVIEWER
    if problem is None:
        try:
            assert ctx.submit_training is not None
            training = plan.request(started_by(commands.reviewer_name(reviewer)))
            run_id = await run_in_threadpool(ctx.submit_training, training)
        except PipelineError as error:
            problem = user_message(error)
    if problem is not None:
        if wants_json(request):
            return JSONResponse({"ok": False, "error": problem}, status_code=status)
        return await run_in_threadpool(_train_page, request, choice, status, problem)
    if wants_json(request):
        return JSONResponse({"ok": True, "run_id": run_id, "request": plan.as_json()})
    target = page_url(
        "/train",
        character=choice.character,
        tags=choice.tags,
        asset_type=choice.asset_type,
        match=choice.match,
        caption=choice.caption,
        preset=choice.preset,
        run=run_id,
    )
    return RedirectResponse(target, status_code=303)


def _first_problem(plan: WizardPlan) -> str | None:
    if not plan.choice.character:
        return "choose a character to train"
    for step in STEPS:
        if step in plan.problems:
            return plan.problems[step]
    return None
