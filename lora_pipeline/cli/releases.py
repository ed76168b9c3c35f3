"""`release`: list LoRA releases, approve, activate, reject, deactivate."""

from __future__ import annotations

import argparse
import sys

from lora_pipeline.cli.common import Subcommands, login_name, registry, settings, typed
from lora_pipeline.generation_settings import POSITIVE_WHOLE
from lora_pipeline.registry import commands, queries


def cmd_release_list(args: argparse.Namespace) -> None:
    from lora_pipeline.evaluation.releases import dataset_label, eval_scores, gate_reasons

    with registry(settings()).session() as session:
        if args.character:
            cast = [commands.get_character(session, args.character)]
        else:
            cast = queries.list_characters(session)
        rows = [(c, release) for c in cast for release in queries.releases_of(session, c.id)]
        if not rows:
            print("no releases yet" + (f" of {args.character}" if args.character else ""))
            return
        print(f"{'id':>5}  {'character':<16} {'status':<9} {'scope':<8} {'checkpoint':<20} created")
        for character, release in rows:
            created = f"{release.created_at:%Y-%m-%d %H:%M}"
            print(
                f"{release.id:>5}  {character.slug:<16} {release.status:<9} {release.scope:<8} "
                f"{release.base_checkpoint or '-':<20} {created}"
            )
            print(f"       dataset {dataset_label(session, release.dataset_version_id)}")
            evaluation = queries.latest_eval(session, release.id)
            if evaluation is None:
                print("       eval    not evaluated yet")
                continue
            scores = ", ".join(f"{k} {v}" for k, v in eval_scores(evaluation).items())
            print(f"       eval    {evaluation.id} {evaluation.verdict}  {scores}".rstrip())
            for reason in gate_reasons(evaluation):
                print(f"               {reason}")


def cmd_release_change(args: argparse.Namespace) -> None:
    """approve / activate / reject / deactivate, then rewrite the model cards."""
    from lora_pipeline.evaluation.releases import change_release
    from lora_pipeline.media.store import DataRoot

    current = settings()
    root = DataRoot(current.data_root)
    override = getattr(args, "override", None)
    change = change_release(
        registry(current),
        root,
        args.release_id,
        args.action,
        current.comfyui_loras_dir,
        override_reason=override,
        reviewer=(args.reviewer or login_name()) if override else None,
        licence=getattr(args, "licence", None),
    )
    print(f"release {change.release_id}: {change.previous} -> {change.status}")
    for other in change.demoted:
        print(f"release {other}: active -> approved")
    for card in change.cards:
        print(f"model card {card}")
    for error in change.card_errors:
        print(f"warning: {error}", file=sys.stderr)


def register(sub: Subcommands) -> None:
    release = sub.add_parser(
        "release", help="LoRA releases: list, approve, activate"
    ).add_subparsers(dest="action", required=True)
    rel_list = release.add_parser("list", help="releases, newest first, with their latest eval")
    rel_list.add_argument("--character")
    rel_list.set_defaults(func=cmd_release_list)
    for name, text in (
        ("approve", "approve a candidate that passed the evaluation gate"),
        ("activate", "make a release the one production generations use"),
        ("reject", "reject a release"),
        ("deactivate", "take the active release out of production (back to approved)"),
    ):
        change = release.add_parser(name, help=text)
        change.add_argument("release_id", type=typed("release id", POSITIVE_WHOLE))
        if name in ("approve", "activate"):
            change.add_argument(
                "--override",
                metavar="REASON",
                help="approve although the gate is unverified (nothing measured the "
                "character); the reason is recorded with the reviewer and in the model card",
            )
            change.add_argument("--reviewer", help="who overrides (default: the login name)")
            change.add_argument(
                "--licence",
                metavar="TEXT",
                help="the licence it is released under (default: the project's, else the "
                "dataset's); required where the project sets --require-licence",
            )
        change.set_defaults(func=cmd_release_change)
