"""`profile`: a project's generation profiles (seed 001): checkpoint, ComfyUI workflow templates
for images and videos, LoRA strength, and which one is the project's default."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from lora_pipeline.cli.common import CliError, Subcommands, registry, settings
from lora_pipeline.generation_settings import LIMITS, parse_number
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.errors import InvalidInputError
from lora_pipeline.registry.models import GenerationProfile, Model, Project

# A workflow exported from ComfyUI is a few kilobytes; anything this big is not one.
MAX_WORKFLOW_BYTES = 5_000_000
# `--unset` names → profile fields.
UNSETTABLE = {
    "checkpoint": "checkpoint",
    "workflow": "workflow_template",
    "video-workflow": "video_workflow_template",
}
_WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
TEMPLATE_FIELDS = {"image": "workflow_template", "video": "video_workflow_template"}
# `--video-workflow` names of the shipped video templates (generation/workflows/).
SHIPPED_VIDEO = {"animatediff": "video", "stock": "video_i2v"}


def checkpoint_argument(text: str) -> str:
    """A checkpoint as given on the command line: a path is made absolute (the workers do not
    share this shell's directory) and must exist; anything else is a hub id."""
    text = text.strip()
    if not text:
        raise CliError("--checkpoint is empty: give a path or a hub id")
    if not text.startswith(("/", "~", ".")) and not text.lower().endswith(_WEIGHT_SUFFIXES):
        return text
    path = Path(text).expanduser()
    if not path.exists():
        raise CliError(
            f"checkpoint {text} does not exist (a hub id has no slash at the start and no suffix)"
        )
    return str(path.resolve())


def workflow_argument(text: str, kind: str) -> dict[str, Any]:
    """A workflow template file (ComfyUI's "Save (API format)"), checked by filling it; for
    videos also a shipped template's name (SHIPPED_VIDEO), so a profile can say which."""
    from lora_pipeline.generation.profiles import check_template
    from lora_pipeline.generation.workflows import WorkflowError, load_template

    if kind == "video" and text in SHIPPED_VIDEO:
        return load_template(SHIPPED_VIDEO[text])
    path = Path(text).expanduser()
    try:
        if path.stat().st_size > MAX_WORKFLOW_BYTES:
            raise CliError(f"{text} is over {MAX_WORKFLOW_BYTES // 1_000_000} MB: not a workflow")
        data = json.loads(path.read_text("utf-8"))
    except OSError as error:
        raise CliError(f"cannot read {text}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise CliError(f"{text} is not a text file (a workflow is JSON)") from None
    except json.JSONDecodeError as error:
        raise CliError(f"{text} is not JSON: {error.msg} (line {error.lineno})") from None
    # The stored shape first (its message knows ComfyUI's UI format), then whether the
    # pipeline can fill it.
    try:
        commands.validate_workflow_template(data, TEMPLATE_FIELDS[kind])
        return check_template(kind, data)
    except (InvalidInputError, WorkflowError) as error:
        raise CliError(f"{text}: {error}") from None


def _values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.checkpoint is not None:
        values["checkpoint"] = checkpoint_argument(args.checkpoint)
    if args.workflow is not None:
        values["workflow_template"] = workflow_argument(args.workflow, "image")
    if args.video_workflow is not None:
        values["video_workflow_template"] = workflow_argument(args.video_workflow, "video")
    if args.lora_strength is not None:
        values["lora_strength"] = parse_number(
            args.lora_strength, "--lora-strength", LIMITS["lora_strength"]
        )
    for name in getattr(args, "unset", []):
        field = UNSETTABLE.get(name.strip().removeprefix("--"))
        if field is None:
            raise CliError(f"cannot unset {name!r}: use one of {', '.join(UNSETTABLE)}")
        if values.get(field) is not None:
            raise CliError(f"--{name} and --unset {name} contradict each other")
        values[field] = None
    return values


def cmd_profile_add(args: argparse.Namespace) -> None:
    values = _values(args)
    with registry(settings()).session() as session:
        profile = commands.add_profile(
            session, args.project, args.name, default=args.default, **values
        )
        print(f"profile {args.name} of project {args.project} added" + _default_note(profile))
        _print_profile(session, profile)


def cmd_profile_set(args: argparse.Namespace) -> None:
    values = _values(args)
    if not values and not args.default:
        raise CliError(
            "nothing to change: give --checkpoint, --workflow, --video-workflow, "
            "--lora-strength, --default or --unset"
        )
    with registry(settings()).session() as session:
        profile = commands.update_profile(
            session, args.project, args.name, default=args.default, **values
        )
        changed = ", ".join([*values, *(["default"] if args.default else [])])
        print(
            f"profile {args.name} of project {args.project}: set {changed} "
            f"(used from the next run on){_default_note(profile)}"
        )
        _print_profile(session, profile)


def _default_note(profile: GenerationProfile) -> str:
    return " — the project's default" if profile.is_default else ""


def cmd_profile_list(args: argparse.Namespace) -> None:
    current = settings()
    with registry(current).session(readonly=True) as session:
        rows = queries.generation_profiles(session, args.project)
        if args.json:
            print(json.dumps([_as_json(*row) for row in rows], indent=2))
            return
        if not rows:
            print("no generation profiles yet (`lora-pipeline profile add PROJECT NAME …`)")
        for profile, project, model in rows:
            print(f"{project.slug} / {profile.name}{'  (default)' if profile.is_default else ''}")
            _print_rows(profile, model, current.base_model)


def _as_json(profile: GenerationProfile, project: Project, model: Model | None) -> dict[str, Any]:
    return {
        "project": project.slug,
        "name": profile.name,
        "default": profile.is_default,
        # null: the studio's base model (LORA_PIPELINE_BASE_MODEL).
        "checkpoint": model.path if model else None,
        "checkpoint_name": model.name if model else None,
        "lora_strength": profile.lora_strength,
        # null: the shipped template.
        "workflow_template": profile.workflow_template,
        "video_workflow_template": profile.video_workflow_template,
    }


def _print_profile(session: Session, profile: GenerationProfile) -> None:
    model = session.get(Model, profile.checkpoint_id) if profile.checkpoint_id else None
    _print_rows(profile, model, settings().base_model)


def _print_rows(profile: GenerationProfile, model: Model | None, base_model: str | None) -> None:
    studio = base_model or "none configured"
    rows = {
        "checkpoint": f"{model.name}  ({model.path})" if model else f"(base model: {studio})",
        "lora_strength": profile.lora_strength,
        "workflow": _template(profile.workflow_template),
        "video_workflow": _template(profile.video_workflow_template),
    }
    for key, value in rows.items():
        print(f"  {key:<16} {value}")


def _template(workflow: dict[str, Any] | None) -> str:
    from lora_pipeline.generation.workflows import load_template

    if workflow is None:
        return "(shipped)"
    for name, template in SHIPPED_VIDEO.items():
        if workflow == load_template(template):
            return f"shipped {name}"
    return f"custom, {len(workflow)} nodes"


def _profile_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project")
    parser.add_argument("name", help="e.g. tokyo_debt_realism")
    parser.add_argument(
        "--checkpoint",
        metavar="PATH_OR_ID",
        help="diffusers folder, .safetensors checkpoint or hub id (its file name must be the "
        "name ComfyUI lists it by)",
    )
    parser.add_argument(
        "--workflow", metavar="FILE.json", help="image template, ComfyUI 'Save (API format)'"
    )
    parser.add_argument(
        "--video-workflow",
        metavar="FILE.json",
        help="video template, ComfyUI API format, or a shipped one: 'animatediff' (custom nodes) "
        "or 'stock' (image-to-video); unset: the one the server can run",
    )
    parser.add_argument("--lora-strength", metavar="X", help="strength of production LoRAs")
    parser.add_argument(
        "--default", action="store_true", help="make it the profile the project's characters use"
    )


def register(sub: Subcommands) -> None:
    profile = sub.add_parser(
        "profile", help="generation profiles: checkpoint, workflow templates, LoRA strength"
    ).add_subparsers(dest="action", required=True)
    add = profile.add_parser("add", help="add a profile (a project's first is its default)")
    _profile_options(add)
    add.set_defaults(func=cmd_profile_add)

    change = profile.add_parser("set", help="change a profile, or make it the default")
    _profile_options(change)
    change.add_argument(
        "--unset",
        action="append",
        default=[],
        metavar="KEY",
        help="back to the base model or shipped template: checkpoint, workflow, video-workflow",
    )
    change.set_defaults(func=cmd_profile_set)

    listing = profile.add_parser("list", help="every profile, or one project's")
    listing.add_argument("--project")
    listing.add_argument("--json", action="store_true", help="for scripts")
    listing.set_defaults(func=cmd_profile_list)
