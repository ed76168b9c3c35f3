"""The Clusters tab: candidate characters found among the unrecognised crops (issue 17 item 4).

Each cluster shows its size and a contact sheet of its crops, with forms to label it as a new
or an existing character (its crops become pending images of it) or to dismiss it: the same
registry commands as `lora-pipeline clusters label|dismiss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from lora_pipeline.errors import user_message
from lora_pipeline.media.store import DataRoot, UnsafePathError
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.commands import clusters as cluster_commands
from lora_pipeline.registry.errors import ConflictError, InvalidInputError, NotFoundError
from lora_pipeline.registry.models import CandidateCluster, Character, UnrecognisedCrop
from lora_pipeline.review.security import csrf_protected, page_url
from lora_pipeline.review.views.approve import IMMUTABLE
from lora_pipeline.review.views.common import _context, _find_file, _text, render, wants_json

# A contact sheet shows this many crops; the count says how many the cluster holds.
SHEET_CROPS = 48
STATUS_CHOICES = {"open": ("open",), "all": ("open", "labelled", "dismissed")}
NO_CHARACTER = "say who this is: choose an existing character, or give the new one's slug and name"
BOTH_GIVEN = "choose an existing character or describe a new one, not both"
# What the registry refuses a label or dismiss with, and the status each answers.
REFUSAL_STATUS: dict[type[Exception], int] = {
    NotFoundError: 404,
    InvalidInputError: 400,
    ConflictError: 409,
}
REFUSALS = tuple(REFUSAL_STATUS)


@dataclass(frozen=True)
class ClusterView:
    id: int
    status: str
    size: int
    character_slug: str | None
    crop_ids: list[int]


@dataclass(frozen=True)
class ProjectClusters:
    slug: str
    name: str
    clusters: list[ClusterView]
    # (slug, name) of the project's characters, for "label as an existing character".
    cast: list[tuple[str, str]]


def _project_clusters(
    session: Session, project: str | None, statuses: tuple[str, ...]
) -> list[ProjectClusters]:
    found = cluster_commands.project_clusters(session, project, statuses)
    projects = {p.id: p for p in queries.list_projects(session)}
    slugs = dict(session.execute(select(Character.id, Character.slug)).tuples().all())
    grouped: dict[int, list[ClusterView]] = {}
    for cluster in found:
        grouped.setdefault(cluster.project_id, []).append(_cluster_view(session, cluster, slugs))
    return [
        ProjectClusters(
            projects[project_id].slug,
            projects[project_id].name,
            views,
            _cast(session, project_id),
        )
        for project_id, views in sorted(grouped.items(), key=lambda kv: projects[kv[0]].slug)
    ]


def _cluster_view(
    session: Session, cluster: CandidateCluster, slugs: dict[int, str]
) -> ClusterView:
    crop_ids = session.scalars(
        select(UnrecognisedCrop.id)
        .where(UnrecognisedCrop.cluster_id == cluster.id)
        .order_by(UnrecognisedCrop.id)
        .limit(SHEET_CROPS)
    ).all()
    return ClusterView(
        cluster.id,
        cluster.status,
        cluster.size,
        slugs.get(cluster.character_id) if cluster.character_id else None,
        list(crop_ids),
    )


def _cast(session: Session, project_id: int) -> list[tuple[str, str]]:
    rows = session.execute(
        select(Character.slug, Character.name)
        .where(Character.project_id == project_id)
        .order_by(Character.slug)
    )
    return list(rows.tuples())


def clusters_page(request: Request) -> Response:
    params = request.query_params
    return _page(request, params.get("project", ""), params.get("status", ""), _notice(request))


def _page(
    request: Request,
    project: str,
    shown: str,
    notice: str | None = None,
    status: int = 200,
    error: str | None = None,
) -> Response:
    ctx = _context(request)
    project, shown = project.strip(), shown if shown in STATUS_CHOICES else "open"
    with ctx.registry.session(readonly=True) as session:
        groups = _project_clusters(session, project or None, STATUS_CHOICES[shown])
        projects = [(p.slug, p.name) for p in queries.list_projects(session)]
    return render(
        request,
        "clusters.html",
        status=status,
        groups=groups,
        projects=projects,
        filters={"project": project, "status": shown},
        notice=notice,
        error=error,
    )


def _notice(request: Request) -> str | None:
    """The notice after a plain (no-script) label or dismiss form."""
    params = request.query_params
    cluster, images = params.get("cluster", ""), params.get("images", "")
    if not (cluster.isascii() and cluster.isdigit()):
        return None
    if params.get("outcome") == "dismissed":
        return f"Cluster {cluster} dismissed: its crops are set aside."
    character = params.get("character", "")
    try:
        commands.validate_slug(character)
    except InvalidInputError:
        return None  # a link of ours names a slug; anything else is not ours to echo
    # isascii: isdigit() alone takes "²", which int() refuses.
    if params.get("outcome") == "labelled" and images.isascii() and images.isdigit():
        return (
            f"Cluster {cluster} labelled {character}: {int(images)} pending image(s) to review "
            "in the Approve tab."
        )
    return None


def _label_choice(form: FormData) -> tuple[str | None, tuple[str, str, str] | None]:
    """(an existing character's slug, None) or (None, the new one's slug, name, prompt)."""
    existing = _text(form, "character")
    new = (_text(form, "slug"), _text(form, "name"), _text(form, "design_prompt"))
    if existing and (new[0] or new[1]):
        raise InvalidInputError(BOTH_GIVEN)
    if existing:
        return existing, None
    if not (new[0] or new[1]):
        raise InvalidInputError(NO_CHARACTER)
    return None, new


@csrf_protected
async def label_cluster_action(request: Request, form: FormData) -> Response:
    """The cluster is a character (an existing one, or a new one of its project): its crops
    become pending images of it."""
    ctx = _context(request)
    cluster_id = request.path_params["cluster_id"]

    def work() -> tuple[str, int]:
        existing, new = _label_choice(form)
        with ctx.registry.session() as session:
            if new is not None:
                character, added = cluster_commands.label_cluster_as_new(session, cluster_id, *new)
                return character.slug, len(added)
            assert existing is not None  # _label_choice gives one or the other
            return existing, len(cluster_commands.label_cluster(session, cluster_id, existing))

    try:
        slug, images = await run_in_threadpool(work)
    except REFUSALS as error:
        return await _refused(request, form, error)
    if wants_json(request):
        return JSONResponse(
            {"ok": True, "cluster_id": cluster_id, "status": "labelled", "character": slug,
             "images": images}
        )  # fmt: skip
    return _back(form, cluster_id, "labelled", character=slug, images=images)


@csrf_protected
async def dismiss_cluster_action(request: Request, form: FormData) -> Response:
    """Not a character worth a LoRA: the cluster is set aside for good."""
    ctx = _context(request)
    cluster_id = request.path_params["cluster_id"]

    def work() -> int:
        with ctx.registry.session() as session:
            return cluster_commands.dismiss_cluster(session, cluster_id).size

    try:
        size = await run_in_threadpool(work)
    except REFUSALS as error:
        return await _refused(request, form, error)
    if wants_json(request):
        return JSONResponse(
            {"ok": True, "cluster_id": cluster_id, "status": "dismissed", "size": size}
        )
    return _back(form, cluster_id, "dismissed")


async def _refused(request: Request, form: FormData, error: Exception) -> Response:
    """A label or dismiss the registry refused: one line, at its status, on the page the form
    was on (a script gets it as JSON)."""
    status = next(code for kind, code in REFUSAL_STATUS.items() if isinstance(error, kind))
    message = user_message(error)
    if wants_json(request):
        return JSONResponse({"ok": False, "error": message}, status_code=status)
    project, shown = _text(form, "project"), _text(form, "status")
    return await run_in_threadpool(_page, request, project, shown, None, status, message)


def _back(form: FormData, cluster_id: int, outcome: str, **extra: object) -> Response:
    # Back to the list the form was on (its project filter), with the outcome as a notice.
    target = page_url(
        "/clusters",
        project=_text(form, "project"),
        status=_text(form, "status"),
        cluster=cluster_id,
        outcome=outcome,
        **extra,
    )
    return RedirectResponse(target, status_code=303)


def _crop_file(session: Session, root: DataRoot, crop_id: int) -> tuple[Path, str] | None:
    """A crop's file and sha256, only if it lies inside the data root."""
    crop = session.get(UnrecognisedCrop, crop_id)
    if crop is None:
        return None
    try:
        path = root.path(crop.path)
    except UnsafePathError:
        return None
    return (path, crop.sha256) if path.is_file() else None


def crop_file(request: Request) -> Response:
    found = _find_file(request, _crop_file, "crop_id")
    if found is None:
        raise HTTPException(404, f"no crop {request.path_params['crop_id']}")
    return FileResponse(found[0], headers=IMMUTABLE)


def crop_thumbnail(request: Request) -> Response:
    """A crop at most 1024 px a side, made once under the app's decode budget (as images')."""
    found = _find_file(request, _crop_file, "crop_id")
    if found is None:
        raise HTTPException(404, f"no crop {request.path_params['crop_id']}")
    thumbnail = _context(request).thumbnails.path(*found)
    return FileResponse(thumbnail, media_type="image/jpeg", headers=IMMUTABLE)
