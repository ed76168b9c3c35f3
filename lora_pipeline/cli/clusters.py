"""`clusters`: candidate characters found among the unrecognised crops of a project."""

from __future__ import annotations

import argparse

from sqlalchemy.orm import Session

from lora_pipeline.cli.common import CliError, Subcommands, registry, settings, typed
from lora_pipeline.generation_settings import POSITIVE_WHOLE
from lora_pipeline.registry.commands import clusters as cluster_commands
from lora_pipeline.registry.models import Character, Project


def cmd_clusters_list(args: argparse.Namespace) -> None:
    statuses = ("open", "labelled", "dismissed") if args.all else ("open",)
    with registry(settings()).session() as session:
        found = cluster_commands.project_clusters(session, args.project, statuses)
        if not found:
            print("no candidate characters" + (f" in {args.project}" if args.project else ""))
            return
        print(f"{'id':>5}  {'project':<16} {'status':<9} {'size':>5}  character / contact sheet")
        for cluster in found:
            label = _character_slug(session, cluster.character_id) or cluster.contact_sheet or "-"
            print(
                f"{cluster.id:>5}  {_project_slug(session, cluster.project_id):<16} "
                f"{cluster.status:<9} {cluster.size:>5}  {label}"
            )


def cmd_clusters_show(args: argparse.Namespace) -> None:
    current = settings()
    with registry(current).session() as session:
        cluster = cluster_commands.get_cluster(session, args.cluster_id)
        crops = cluster_commands.cluster_crops(session, cluster.id)
        project = _project_slug(session, cluster.project_id)
        print(
            f"cluster {cluster.id}: {cluster.status}, {cluster.size} crop(s), project {project}, "
            f"embedder {cluster.embedder}"
        )
        if cluster.character_id is not None:
            print(f"labelled as {_character_slug(session, cluster.character_id)}")
        if cluster.contact_sheet:
            print(f"contact sheet {current.data_root / cluster.contact_sheet}")
        for crop in crops:
            box = (crop.provenance or {}).get("crop", {}).get("box")
            frame = (crop.provenance or {}).get("frame_index")
            source = (crop.provenance or {}).get("source_id")
            print(f"  crop {crop.id}: source {source} frame {frame} box {box}  {crop.path}")


def cmd_clusters_label(args: argparse.Namespace) -> None:
    if bool(args.character) == bool(args.new):
        raise CliError("give --character SLUG (an existing character) or --new SLUG --name NAME")
    with registry(settings()).session() as session:
        cluster = cluster_commands.get_cluster(session, args.cluster_id)
        slug = args.character
        if args.new:
            if not args.name:
                raise CliError("--new needs --name, the new character's name")
            _, added = cluster_commands.label_cluster_as_new(
                session, cluster.id, args.new, args.name, args.design_prompt or ""
            )
            slug = args.new
        else:
            added = cluster_commands.label_cluster(session, cluster.id, slug)
        print(f"cluster {cluster.id} labelled {slug}: {len(added)} pending image(s) to review")


def cmd_clusters_dismiss(args: argparse.Namespace) -> None:
    with registry(settings()).session() as session:
        cluster = cluster_commands.dismiss_cluster(session, args.cluster_id)
        print(f"cluster {cluster.id} dismissed ({cluster.size} crop(s) set aside)")


def cmd_clusters_run(args: argparse.Namespace) -> None:
    from lora_pipeline.media.store import DataRoot
    from lora_pipeline.model_runtime import ModelRuntime
    from lora_pipeline.vision.clustering import cluster_project

    current = settings()
    embedder = ModelRuntime(current).identity_embedder()
    if embedder is None:
        raise CliError(
            "clustering needs an identity model: set LORA_PIPELINE_IDENTITY_MODEL to "
            "ccip:<model.onnx> or a CLIP vision model"
        )
    stats = cluster_project(
        registry(current), DataRoot(current.data_root), args.project, embedder, print,
        min_cluster_size=args.min_size,
    )  # fmt: skip
    print(
        f"{stats.clusters} candidate character(s), {stats.new_candidates} new, "
        f"{stats.noise} crop(s) in none, {stats.images_added} image(s) for labelled ones"
    )


def _project_slug(session: Session, project_id: int) -> str:
    project = session.get(Project, project_id)
    return project.slug if project else "?"


def _character_slug(session: Session, character_id: int | None) -> str | None:
    character = session.get(Character, character_id) if character_id else None
    return character.slug if character else None


def register(sub: Subcommands) -> None:
    clusters = sub.add_parser(
        "clusters", help="candidate characters among the unrecognised crops"
    ).add_subparsers(dest="action", required=True)
    listing = clusters.add_parser("list", help="candidate characters, largest first")
    listing.add_argument("--project")
    listing.add_argument("--all", action="store_true", help="labelled and dismissed ones too")
    listing.set_defaults(func=cmd_clusters_list)
    cluster_id = typed("cluster id", POSITIVE_WHOLE)
    show = clusters.add_parser("show", help="a cluster's crops and contact sheet")
    show.add_argument("cluster_id", type=cluster_id)
    show.set_defaults(func=cmd_clusters_show)
    label = clusters.add_parser(
        "label", help="the cluster is a character: its crops become pending images of it"
    )
    label.add_argument("cluster_id", type=cluster_id)
    label.add_argument("--character", metavar="SLUG", help="an existing character")
    label.add_argument("--new", metavar="SLUG", help="a new character of the project")
    label.add_argument("--name", help="the new character's name")
    label.add_argument("--design-prompt", help="the new character's design prompt")
    label.set_defaults(func=cmd_clusters_label)
    dismiss = clusters.add_parser("dismiss", help="not a character: set the cluster aside")
    dismiss.add_argument("cluster_id", type=cluster_id)
    dismiss.set_defaults(func=cmd_clusters_dismiss)
    run = clusters.add_parser("run", help="cluster a project's unrecognised crops now")
    run.add_argument("project")
    run.add_argument("--min-size", type=typed("--min-size", POSITIVE_WHOLE), default=3)
    run.set_defaults(func=cmd_clusters_run)
