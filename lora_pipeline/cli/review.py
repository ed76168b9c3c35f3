"""`review`: the review web app, or review from the terminal."""

from __future__ import annotations

import argparse
import json
import sys

from lora_pipeline.cli.common import CliError, Subcommands, login_name, registry, settings, typed
from lora_pipeline.config import Settings
from lora_pipeline.errors import user_message
from lora_pipeline.generation_settings import POSITIVE_WHOLE
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.models import Image
from lora_pipeline.review.pipeline_state import RunSource
from lora_pipeline.training.launch import TrainingSubmitter


def cmd_review_serve(args: argparse.Namespace) -> None:
    """Start the review web app (Characters, Approve, Generate, Gallery, Ingest)."""
    from lora_pipeline.review.app import check_bind, serve

    current = settings()
    token = args.token or current.review_token
    check_bind(args.host, token)
    login = " (log in once with /?token=YOUR-TOKEN)" if token else ""
    print(f"review app on http://{args.host}:{args.port}/{login}", flush=True)
    serve(
        current,
        host=args.host,
        port=args.port,
        access_token=token,
        runs=dagster_runs(current),
        submit_training=training_queue(current),
    )


def training_queue(current: Settings) -> TrainingSubmitter:
    """The Train tab's Start: `train`'s own helper, handed over since the app may not import
    Dagster."""
    from lora_pipeline.cli.runs import submit_training

    return lambda request: submit_training(current, request)


def dagster_runs(current: Settings) -> RunSource:
    """The unfinished runs of the instance, as `lora-pipeline runs` reads them: the review app
    shows them but may not import Dagster, so the CLI hands it this."""
    opened: list = []

    def unfinished() -> list:
        # Opened at the first poll, not at start: a home whose instance is not set up yet
        # (no `init`) still serves the app, and shows runs once there is one.
        if not current.dagster_home.is_dir():
            return []
        from lora_pipeline.defs.instance import open_instance, run_summaries

        if not opened:
            opened.append(open_instance(current.dagster_home))
        return run_summaries(opened[0], limit=100, unfinished_only=True)

    return unfinished


def cmd_review_list(args: argparse.Namespace) -> None:
    with registry(settings()).session() as session:
        images = queries.pending_images(
            session, project_slug=args.project, character_slug=args.character, limit=args.limit
        )
        if args.json:
            print(json.dumps([_image_json(image) for image in images], indent=2))
            return
        if not images:
            print("no pending images")
        for image in images:
            params = image.generation_params or {}
            detail = f"seed {params['seed']}" if "seed" in params else image.origin
            print(f"{image.id:>6}  {image.character.slug:<20} {image.path}  {detail}")


def _image_json(image: Image) -> dict[str, object]:
    params = image.generation_params or {}
    return {
        "id": image.id,
        "character": image.character.slug,
        "path": image.path,
        "origin": image.origin,
        "sha256": image.sha256,
        "width": image.width,
        "height": image.height,
        "seed": params.get("seed"),
        "generation_job_id": image.generation_job_id,
        "answers_feedback": (image.provenance or {}).get("answers_feedback", []),
        "created_at": image.created_at.isoformat(),
    }


def cmd_review_approve(args: argparse.Namespace) -> None:
    """Approve each id on its own: the good ones are approved, each bad one gets its line."""
    from lora_pipeline import actions

    refused = actions.approve_images(registry(settings()), args.image_ids, reviewer=args.reviewer)
    approved = [i for i in dict.fromkeys(args.image_ids) if i not in refused]
    if approved:
        print(f"approved {', '.join(map(str, approved))}")
    reasons = [user_message(error) for error in refused.values()]
    for reason in reasons[:-1]:
        print(f"error: {reason}", file=sys.stderr)
    if reasons:
        # The last goes through the CLI's error path: the same "error: ..." line, exit status 2.
        raise CliError(reasons[-1])


def cmd_review_reject(args: argparse.Namespace) -> None:
    from lora_pipeline import actions

    terms = actions.reject_image(
        registry(settings()),
        args.image_id,
        [c.replace("-", "_") for c in args.category],
        notes=args.notes,
        prompt_edit=args.prompt_edit,
        reviewer=args.reviewer,
    )
    avoided = ", ".join(terms) or "none"
    print(f"rejected {args.image_id}; negative terms for the regeneration: {avoided}")


def cmd_image_tag(args: argparse.Namespace) -> None:
    if not (args.add or args.remove or args.asset_type):
        raise CliError("say what to change: --add TAG, --remove TAG or --asset-type TYPE")
    with registry(settings()).session() as session:
        images = commands.tag_images(
            session, args.image_ids, args.add, args.remove, args.asset_type
        )
        tagged = [(image.id, commands.stored_tags(image)) for image in images]
    for image_id, tags in tagged:
        print(f"image {image_id}: {', '.join(tags) or 'no tags'}")


def register(sub: Subcommands) -> None:
    image = sub.add_parser("image", help="tag images (tags and asset types select datasets)")
    image_actions = image.add_subparsers(dest="action", required=True)
    tag = image_actions.add_parser("tag", help="add or remove tags, set the asset type")
    tag.add_argument("image_ids", type=typed("image id", POSITIVE_WHOLE), nargs="+")
    tag.add_argument("--add", action="append", default=[], metavar="TAG", help="repeatable")
    tag.add_argument("--remove", action="append", default=[], metavar="TAG", help="repeatable")
    tag.add_argument("--asset-type", help="e.g. character, ui_icon (stored as asset_type:TYPE)")
    tag.set_defaults(func=cmd_image_tag)

    review_app = sub.add_parser(
        "review", help="start the review web app on 127.0.0.1, or review from the terminal"
    )
    review_app.add_argument("--host", default="127.0.0.1")
    review_app.add_argument("--port", type=int, default=8765)
    review_app.add_argument(
        "--token",
        default=None,
        help="access token, required to bind a non-loopback address "
        "(default: $LORA_PIPELINE_REVIEW_TOKEN)",
    )
    review_app.set_defaults(func=cmd_review_serve)
    review = review_app.add_subparsers(dest="action")
    rlist = review.add_parser("list", help="pending images")
    rlist.add_argument("--project")
    rlist.add_argument("--character")
    rlist.add_argument("--limit", type=int, default=50)
    rlist.add_argument("--json", action="store_true", help="for scripts")
    rlist.set_defaults(func=cmd_review_list)
    rapprove = review.add_parser("approve", help="approve images")
    rapprove.add_argument("image_ids", type=typed("image id", POSITIVE_WHOLE), nargs="+")
    rapprove.add_argument("--reviewer", default=login_name())
    rapprove.set_defaults(func=cmd_review_approve)
    rreject = review.add_parser("reject", help="reject an image with feedback")
    rreject.add_argument("image_id", type=typed("image id", POSITIVE_WHOLE))
    rreject.add_argument(
        "--category",
        action="append",
        default=[],
        choices=[c.replace("_", "-") for c in commands.REJECTION_CATEGORIES]
        + list(commands.REJECTION_CATEGORIES),
        help="repeatable",
    )
    rreject.add_argument("--notes", default="")
    rreject.add_argument("--prompt-edit", help="new design prompt for all future generations")
    rreject.add_argument("--reviewer", default=login_name())
    rreject.set_defaults(func=cmd_review_reject)
