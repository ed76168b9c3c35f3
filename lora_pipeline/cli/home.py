"""`init`, `config`, `status`, `demo`, `ui`: the installation and a look at everything."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from lora_pipeline.cli.common import CliError, Subcommands, display_url, registry, settings
from lora_pipeline.config import child_environment, readme_with_table, save_settings
from lora_pipeline.registry import queries
from lora_pipeline.registry.db import migrate
from lora_pipeline.registry.models import Character


def cmd_init(args: argparse.Namespace) -> None:
    from lora_pipeline.defs.instance import prepare_dagster_home

    current = settings()
    current.ensure_dirs()
    save_settings(current.home, base_model=args.base_model, comfyui_url=args.comfyui_url)
    revision = migrate(current.database_url)
    yaml_path = prepare_dagster_home(current.dagster_home, postgres=args.dagster_postgres)
    print(f"registry   {display_url(current.database_url)} (schema {revision})")
    print(f"data root  {current.data_root}")
    print(f"dagster    {yaml_path} (pools gpu and gpu_interactive limited to 1)")


def cmd_config(args: argparse.Namespace) -> None:
    """The effective settings and where each came from; --check validates paths and URLs."""
    if args.readme:
        readme = Path(args.readme)
        readme.write_text(readme_with_table(readme.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"settings table written to {readme}")
        return
    current = settings()
    if args.check:
        problems = current.check()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            raise CliError(f"{len(problems)} setting(s) need attention")
        print("settings ok")
        return
    for item in current.describe():
        print(f"{item.variable:<40} {item.shown():<50} {item.origin}")


def cmd_status(args: argparse.Namespace) -> None:
    with registry(settings()).session(readonly=True) as session:
        rows = [_status_row(session, c) for c in queries.list_characters(session, args.project)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no characters yet: `lora-pipeline character add`")
    print(f"{'character':<20} {'project':<14} pend  appr  rej  skip  dataset       release")
    for row in rows:
        counts, release = row["images"], row["release"]
        shown = f"{release['id']} ({release['status']})" if release else "-"
        print(
            f"{row['character']:<20} {row['project']:<14} {counts['pending']:>4}  "
            f"{counts['approved']:>4}  {counts['rejected']:>3}  {counts['skipped']:>4}  "
            f"{(row['dataset_version'] or '-')[:12]:<12}  "
            f"{shown}"
        )


def _status_row(session: Session, character: Character) -> dict[str, Any]:
    version = queries.latest_dataset_version(session, character.id)
    release = queries.latest_release(session, character.id)
    return {
        "character": character.slug,
        "project": character.project.slug,
        "images": queries.image_counts(session, character.id),
        "dataset_version": version.version_hash if version else None,
        "dataset_run_id": version.run_id if version else None,
        "release": {"id": release.id, "status": release.status, "run_id": release.run_id}
        if release
        else None,
    }


def cmd_demo(args: argparse.Namespace) -> None:
    from lora_pipeline.demo import run_demo
    from lora_pipeline.logging_setup import quiet_ml_libraries

    quiet_ml_libraries()
    run_demo(settings(), print)


def cmd_ui(args: argparse.Namespace) -> None:
    """Start `dagster dev` on this code location with the project's Dagster home."""
    from lora_pipeline.defs.instance import prepare_dagster_home

    current = settings()
    prepare_dagster_home(current.dagster_home)
    dagster = shutil.which("dagster") or str(Path(sys.executable).with_name("dagster"))
    argv = [dagster, "dev", "-m", "lora_pipeline.definitions", "-h", args.host]
    argv += ["-p", str(args.port)]
    os.execve(argv[0], argv, child_environment(DAGSTER_HOME=str(current.dagster_home)))


def register(sub: Subcommands) -> None:
    init = sub.add_parser("init", help="create the registry, data root and Dagster home")
    init.add_argument("--base-model", help="diffusers folder, .safetensors file or hub id")
    init.add_argument("--comfyui-url", help="e.g. http://127.0.0.1:8188")
    init.add_argument("--dagster-postgres", action="store_true", help="Dagster on PostgreSQL")
    init.set_defaults(func=cmd_init)

    config = sub.add_parser("config", help="the effective settings and where each came from")
    config.add_argument("--check", action="store_true", help="validate paths and URLs")
    config.add_argument("--readme", metavar="PATH", help="rewrite the README's settings table")
    config.set_defaults(func=cmd_config)

    status = sub.add_parser("status", help="characters, counts, datasets and releases")
    status.add_argument("--project")
    status.add_argument("--json", action="store_true", help="for scripts")
    status.set_defaults(func=cmd_status)

    demo = sub.add_parser("demo", help="build a demo project and run the whole graph on the CPU")
    demo.set_defaults(func=cmd_demo)

    ui = sub.add_parser("ui", help="start the Dagster web UI (dagster dev) on 127.0.0.1")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)
