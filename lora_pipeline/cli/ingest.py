"""`ingest`: request an ingest of a URL or file, or scan the ComfyUI output folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from lora_pipeline.cli.common import CliError, Subcommands, registry, settings
from lora_pipeline.config import Settings
from lora_pipeline.generation_settings import POSITIVE_WHOLE, parse_number
from lora_pipeline.registry import queries
from lora_pipeline.registry.db import Registry


def cmd_ingest(args: argparse.Namespace) -> None:
    from lora_pipeline import actions
    from lora_pipeline.media.store import DataRoot

    if args.comfyui_output:
        _ingest_comfyui_output(args)
        return
    if _is_retry(args):
        _retry(args)
        return
    if args.source_id is not None:
        raise CliError(f"unexpected argument {args.source_id!r}: give one URL or file")
    if not args.source or not (args.character or args.project):
        raise CliError("give a URL or file and --character or --project (or --comfyui-output)")
    current = settings()
    store = registry(current)
    target = actions.ingest_target(store, args.character, args.project)
    url = args.source if actions.is_url(args.source) else None
    created = actions.request_ingest(
        store,
        DataRoot(current.data_root),
        target,
        url=url,
        file=None if url else Path(args.source),
        fps=args.fps,
        max_frames=args.max_frames,
    )
    print(f"ingest request {created.source_id} created ({created.kind}, {created.mode} mode)")
    if args.now:
        _ingest_now(current, store, created.source_id)
    else:
        print("the ingest sensor starts it under `lora-pipeline ui`; or pass --now")


def _is_retry(args: argparse.Namespace) -> bool:
    """`ingest retry ID`; a file really named `retry` is still ingested (give it as ./retry)."""
    return args.source == "retry" and (args.source_id is not None or not Path("retry").exists())


def _retry(args: argparse.Namespace) -> None:
    from lora_pipeline import actions

    if args.source_id is None:
        raise CliError("give the id of the failed source: lora-pipeline ingest retry SOURCE_ID")
    source_id = parse_number(args.source_id, "source id", POSITIVE_WHOLE)
    current = settings()
    store = registry(current)
    retried = actions.retry_ingest(store, int(source_id))
    print(f"ingest {retried.source_id} is pending again ({retried.kind}, {retried.mode} mode)")
    if args.now:
        _ingest_now(current, store, retried.source_id)
    else:
        print("the ingest sensor starts it under `lora-pipeline ui`; or pass --now")


def _ingest_comfyui_output(args: argparse.Namespace) -> None:
    """Scan the ComfyUI output folder now, as the comfyui_output_sensor does."""
    from lora_pipeline.media.comfyui_scan import register_new_outputs

    current = settings()
    folder = Path(args.folder) if args.folder else current.comfyui_output_dir
    if folder is None or not folder.is_dir():
        raise CliError(
            f"no ComfyUI output folder at {folder}: pass --folder or set "
            "LORA_PIPELINE_COMFYUI_OUTPUT_DIR"
        )
    store = registry(current)
    result = register_new_outputs(store, folder, args.project or current.comfyui_project, print)
    print(f"{len(result.source_ids)} new ComfyUI outputs to ingest")
    if args.now and result.source_ids:
        _ingest_now(current, store, result.source_ids, {"comfyui_output_dir": str(folder)})


def _ingest_now(
    current: Settings,
    store: Registry,
    source_ids: int | list[int],
    ingest_config: dict[str, object] | None = None,
) -> None:
    from lora_pipeline.defs.instance import materialize_partition, open_instance
    from lora_pipeline.registry.models import Source

    ids = [source_ids] if isinstance(source_ids, int) else list(source_ids)
    by_partition: dict[str, list[int]] = {}
    with store.session() as session:
        for source_id in ids:
            slug = _source_partition(session, session.get(Source, source_id))
            by_partition.setdefault(slug, []).append(source_id)
    instance = open_instance(current.dagster_home)
    failed_runs = [
        slug
        for slug, group in by_partition.items()
        if not materialize_partition(
            instance,
            slug,
            ["ingested_frames", "classified_frames"],
            {
                "ops": {
                    "ingested_frames": {"config": {"source_ids": group, **(ingest_config or {})}}
                }
            },
        )
    ]
    with store.session() as session:
        for source_id in ids:
            source = session.get(Source, source_id)
            if source.state == "failed":
                raise CliError(f"ingest {source_id} failed: {source.error}")
            print(f"ingest {source_id}: {source.state}, {source.stats}")
    if failed_runs:
        raise CliError(
            f"the ingest run for {', '.join(failed_runs)} failed; "
            "see `lora-pipeline ui` for its logs"
        )


def _source_partition(session, source) -> str:
    slug = queries.ingest_partition(session, source)
    if slug is None:
        raise CliError("the project has no character to ingest for")
    return slug


def register(sub: Subcommands) -> None:
    ingest = sub.add_parser(
        "ingest", help="request an ingest of a URL, video or image, or scan ComfyUI's outputs"
    )
    ingest.add_argument(
        "source",
        nargs="?",
        help="a URL (YouTube or any yt-dlp site) or a local file; or `retry SOURCE_ID` to run "
        "a failed ingest again",
    )
    ingest.add_argument("source_id", nargs="?", metavar="SOURCE_ID", help=argparse.SUPPRESS)
    target = ingest.add_mutually_exclusive_group()
    target.add_argument("--character", help="single-character mode")
    target.add_argument(
        "--project",
        help="project mode: frames sorted into its characters (with --comfyui-output: the "
        "project of files whose name matches no character)",
    )
    ingest.add_argument(
        "--comfyui-output",
        action="store_true",
        help="ingest the new images of the ComfyUI output folder",
    )
    ingest.add_argument("--folder", help="the ComfyUI output folder (default: configured)")
    ingest.add_argument("--fps", type=float, default=1.0)
    ingest.add_argument("--max-frames", type=int, default=100)
    ingest.add_argument("--now", action="store_true", help="run the ingest in this process")
    ingest.set_defaults(func=cmd_ingest)
