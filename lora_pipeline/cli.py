"""`lora-pipeline`: set up, add projects and characters, ingest, review, releases, status, demo, ui.

Every expected failure (unknown character, bad slug, missing file, unreachable URL) prints one
line on stderr and exits with status 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lora_pipeline.config import (
    Settings,
    SettingsError,
    child_environment,
    readme_with_table,
    save_settings,
)
from lora_pipeline.errors import PipelineError, user_message
from lora_pipeline.generation_settings import (
    ANY_NUMBER,
    LIMITS,
    POSITIVE_WHOLE,
    InvalidSettingError,
    Limit,
    parse_number,
)
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.errors import RegistryError


class CliError(PipelineError):
    """An expected failure: its message is printed as is."""


def _settings() -> Settings:
    return Settings.current()


def _login_name() -> str:
    # The reviewer a terminal decision is recorded under, unless --reviewer says otherwise.
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""


def _registry(settings: Settings) -> Registry:
    migrate(settings.database_url)
    return Registry(settings.database_url)


# --- init -------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> None:
    from lora_pipeline.defs.instance import prepare_dagster_home

    settings = _settings()
    settings.ensure_dirs()
    save_settings(settings.home, base_model=args.base_model, comfyui_url=args.comfyui_url)
    revision = migrate(settings.database_url)
    yaml_path = prepare_dagster_home(settings.dagster_home, postgres=args.dagster_postgres)
    print(f"registry   {_display_url(settings.database_url)} (schema {revision})")
    print(f"data root  {settings.data_root}")
    print(f"dagster    {yaml_path} (pool gpu limited to 1)")


def _display_url(url: str) -> str:
    # Never print a password from a database URL.
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_config(args: argparse.Namespace) -> None:
    """The effective settings and where each came from; --check validates paths and URLs."""
    if args.readme:
        readme = Path(args.readme)
        readme.write_text(readme_with_table(readme.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"settings table written to {readme}")
        return
    settings = _settings()
    if args.check:
        problems = settings.check()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            raise CliError(f"{len(problems)} setting(s) need attention")
        print("settings ok")
        return
    for item in settings.describe():
        print(f"{item.variable:<40} {item.shown():<50} {item.origin}")


# --- projects and characters --------------------------------------------------------------------


def cmd_project_add(args: argparse.Namespace) -> None:
    with _registry(_settings()).session() as session:
        project = commands.add_project(
            session, args.slug, args.name or args.slug, args.description, args.style_prompt
        )
        print(f"project {project.slug} added")


# Project settings by kind (see commands.PROJECT_SETTINGS); the CLI parses the numbers so that a
# bad one is one `error:` line like every other bad value.
LIST_SETTINGS = ("eval_prompts", "eval_seeds")
TEXT_SETTINGS = commands.LICENCE_FIELDS
THRESHOLD_SETTINGS = tuple(
    key for key in commands.PROJECT_SETTINGS if key not in LIST_SETTINGS + TEXT_SETTINGS
)
# `--unset` also takes the singular option names.
SETTING_ALIASES = {"eval_prompt": "eval_prompts", "eval_seed": "eval_seeds"}


def _option(key: str) -> str:
    return "--" + SETTING_ALIASES.get(key, key).replace("_", "-")


def _typed(label: str, limit: Limit) -> Callable[[str], int | float]:
    """An argparse type that parses a typed number with the shared parser (its message)."""

    def parse(text: str) -> int | float:
        try:
            return parse_number(text, label, limit)
        except InvalidSettingError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _setting_key(name: str) -> str:
    key = name.strip().replace("-", "_").removeprefix("__")
    key = SETTING_ALIASES.get(key, key)
    if key not in commands.PROJECT_SETTINGS:
        raise CliError(
            f"unknown project setting {name!r}: use {', '.join(commands.PROJECT_SETTINGS)}"
        )
    return key


def _project_settings_from(args: argparse.Namespace) -> dict[str, object]:
    values: dict[str, object] = {}
    if args.eval_prompts:
        values["eval_prompts"] = list(args.eval_prompts)
    if args.eval_seeds:
        seed = LIMITS["seed"]
        values["eval_seeds"] = [parse_number(t, "--eval-seed", seed) for t in args.eval_seeds]
    for key in THRESHOLD_SETTINGS:
        text = getattr(args, key)
        if text is not None:
            values[key] = parse_number(text, _option(key), ANY_NUMBER)
    for key in TEXT_SETTINGS:
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    for key in map(_setting_key, args.unset):
        if key in values:
            raise CliError(f"{_option(key)} and --unset {key} contradict each other")
        values[key] = None
    if not values:
        raise CliError("nothing to change: give a setting such as --min-identity, or --unset KEY")
    return values


def cmd_project_set(args: argparse.Namespace) -> None:
    values = _project_settings_from(args)
    with _registry(_settings()).session() as session:
        project = commands.update_project_settings(session, args.slug, **values)
        changed = ", ".join(k for k, v in values.items() if v is not None)
        removed = ", ".join(k for k, v in values.items() if v is None)
        done = "; ".join(
            part for part in (changed and f"set {changed}", removed and f"unset {removed}") if part
        )
        print(f"project {project.slug}: {done}")
        _print_project_settings(project.settings or {})


def cmd_project_show(args: argparse.Namespace) -> None:
    with _registry(_settings()).session() as session:
        project = commands.get_project(session, args.slug)
        print(f"project {project.slug}: {project.name}")
        _print_project_settings(project.settings or {})


def _print_project_settings(settings: dict[str, object]) -> None:
    """Every project setting, one a line; an unset one keeps the pipeline's default."""
    for key in commands.PROJECT_SETTINGS:
        value = settings.get(key)
        if value is None:
            print(f"  {key:<16} (default)")
        elif key == "eval_prompts" and isinstance(value, list):
            print(f"  {key:<16} {len(value)} prompt(s)")
            for number, prompt in enumerate(value, 1):
                print(f"    {number}. {prompt}")
        elif isinstance(value, list):
            print(f"  {key:<16} {', '.join(map(str, value))}")
        else:
            print(f"  {key:<16} {value}")


# Generation settings `character add` takes; the numbers are parsed with their shared limits.
CHARACTER_NUMBERS = ("seed", "cfg", "steps", "width", "height")


def cmd_character_add(args: argparse.Namespace) -> None:
    settings: dict[str, object] = {
        k: parse_number(getattr(args, k), f"--{k}", LIMITS[k])
        for k in CHARACTER_NUMBERS
        if getattr(args, k) is not None
    }
    if args.sampler is not None:
        settings["sampler"] = args.sampler
    with _registry(_settings()).session() as session:
        character = commands.add_character(
            session,
            args.project,
            args.slug,
            args.name or args.slug,
            design_prompt=args.design_prompt,
            trigger_word=args.trigger_word,
            negative_prompt=args.negative_prompt,
            **settings,
        )
        print(f"character {character.slug} added (trigger word {character.trigger_word})")


# --- ingest ---------------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> None:
    from lora_pipeline import actions
    from lora_pipeline.media.store import DataRoot

    if args.comfyui_output:
        _ingest_comfyui_output(args)
        return
    if not args.source or not (args.character or args.project):
        raise CliError("give a URL or file and --character or --project (or --comfyui-output)")
    settings = _settings()
    registry = _registry(settings)
    target = actions.ingest_target(registry, args.character, args.project)
    url = args.source if actions.is_url(args.source) else None
    created = actions.request_ingest(
        registry,
        DataRoot(settings.data_root),
        target,
        url=url,
        file=None if url else Path(args.source),
        fps=args.fps,
        max_frames=args.max_frames,
    )
    print(f"ingest request {created.source_id} created ({created.kind}, {created.mode} mode)")
    if args.now:
        _ingest_now(settings, registry, created.source_id)
    else:
        print("the ingest sensor starts it under `lora-pipeline ui`; or pass --now")


def _ingest_comfyui_output(args: argparse.Namespace) -> None:
    """Scan the ComfyUI output folder now, as the comfyui_output_sensor does."""
    from lora_pipeline.media.comfyui_scan import register_new_outputs

    settings = _settings()
    folder = Path(args.folder) if args.folder else settings.comfyui_output_dir
    if folder is None or not folder.is_dir():
        raise CliError(
            f"no ComfyUI output folder at {folder}: pass --folder or set "
            "LORA_PIPELINE_COMFYUI_OUTPUT_DIR"
        )
    registry = _registry(settings)
    result = register_new_outputs(registry, folder, args.project or settings.comfyui_project, print)
    print(f"{len(result.source_ids)} new ComfyUI outputs to ingest")
    if args.now and result.source_ids:
        _ingest_now(settings, registry, result.source_ids, {"comfyui_output_dir": str(folder)})


def _ingest_now(
    settings: Settings,
    registry: Registry,
    source_ids: int | list[int],
    ingest_config: dict[str, object] | None = None,
) -> None:
    from lora_pipeline.defs.instance import materialize_partition, open_instance
    from lora_pipeline.registry.models import Source

    ids = [source_ids] if isinstance(source_ids, int) else list(source_ids)
    by_partition: dict[str, list[int]] = {}
    with registry.session() as session:
        for source_id in ids:
            slug = _source_partition(session, session.get(Source, source_id))
            by_partition.setdefault(slug, []).append(source_id)
    instance = open_instance(settings.dagster_home)
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
    with registry.session() as session:
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


# --- review -------------------------------------------------------------------------------------


def cmd_review_serve(args: argparse.Namespace) -> None:
    """Start the review web app (Characters, Approve, Generate, Gallery, Ingest)."""
    from lora_pipeline.review.app import check_bind, serve

    settings = _settings()
    token = args.token or settings.review_token
    check_bind(args.host, token)
    login = " (log in once with /?token=YOUR-TOKEN)" if token else ""
    print(f"review app on http://{args.host}:{args.port}/{login}", flush=True)
    serve(settings, host=args.host, port=args.port, access_token=token)


def cmd_review_list(args: argparse.Namespace) -> None:
    with _registry(_settings()).session() as session:
        images = queries.pending_images(
            session, project_slug=args.project, character_slug=args.character, limit=args.limit
        )
        if not images:
            print("no pending images")
        for image in images:
            params = image.generation_params or {}
            detail = f"seed {params['seed']}" if "seed" in params else image.origin
            print(f"{image.id:>6}  {image.character.slug:<20} {image.path}  {detail}")


def cmd_review_approve(args: argparse.Namespace) -> None:
    from lora_pipeline import actions

    actions.approve_images(_registry(_settings()), args.image_ids, reviewer=args.reviewer)
    print(f"approved {', '.join(map(str, args.image_ids))}")


def cmd_review_reject(args: argparse.Namespace) -> None:
    from lora_pipeline import actions

    terms = actions.reject_image(
        _registry(_settings()),
        args.image_id,
        [c.replace("-", "_") for c in args.category],
        notes=args.notes,
        prompt_edit=args.prompt_edit,
        reviewer=args.reviewer,
    )
    avoided = ", ".join(terms) or "none"
    print(f"rejected {args.image_id}; negative terms for the regeneration: {avoided}")


# --- releases -----------------------------------------------------------------------------------


def cmd_release_list(args: argparse.Namespace) -> None:
    from lora_pipeline.evaluation.releases import dataset_label, eval_scores, gate_reasons

    with _registry(_settings()).session() as session:
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

    settings = _settings()
    root = DataRoot(settings.data_root)
    change = change_release(
        _registry(settings), root, args.release_id, args.action, settings.comfyui_loras_dir
    )
    print(f"release {change.release_id}: {change.previous} -> {change.status}")
    for other in change.demoted:
        print(f"release {other}: active -> approved")
    for card in change.cards:
        print(f"model card {card}")
    for error in change.card_errors:
        print(f"warning: {error}", file=sys.stderr)


# --- status ---------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> None:
    with _registry(_settings()).session() as session:
        characters = queries.list_characters(session, project_slug=args.project)
        if not characters:
            print("no characters yet: `lora-pipeline character add`")
        print(f"{'character':<20} {'project':<14} pend  appr  rej  skip  dataset       release")
        for c in characters:
            counts = queries.image_counts(session, c.id)
            version = queries.latest_dataset_version(session, c.id)
            release = queries.latest_release(session, c.id)
            print(
                f"{c.slug:<20} {c.project.slug:<14} {counts['pending']:>4}  "
                f"{counts['approved']:>4}  {counts['rejected']:>3}  {counts['skipped']:>4}  "
                f"{version.version_hash[:12] if version else '-':<12}  "
                f"{f'{release.id} ({release.status})' if release else '-'}"
            )


# --- demo and ui ----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> None:
    from lora_pipeline.demo import run_demo
    from lora_pipeline.logging_setup import quiet_ml_libraries

    quiet_ml_libraries()
    run_demo(_settings(), print)


def cmd_ui(args: argparse.Namespace) -> None:
    """Start `dagster dev` on this code location with the project's Dagster home."""
    from lora_pipeline.defs.instance import prepare_dagster_home

    settings = _settings()
    prepare_dagster_home(settings.dagster_home)
    dagster = shutil.which("dagster") or str(Path(sys.executable).with_name("dagster"))
    argv = [
        dagster,
        "dev",
        "-m",
        "lora_pipeline.definitions",
        "-h",
        args.host,
        "-p",
        str(args.port),
    ]
    os.execve(argv[0], argv, child_environment(DAGSTER_HOME=str(settings.dagster_home)))


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="create the registry, data root and Dagster home")
    init.add_argument("--base-model", help="diffusers folder, .safetensors file or hub id")
    init.add_argument("--comfyui-url", help="e.g. http://127.0.0.1:8188")
    init.add_argument("--dagster-postgres", action="store_true", help="Dagster on PostgreSQL")
    init.set_defaults(func=cmd_init)

    project = sub.add_parser("project", help="projects").add_subparsers(
        dest="action", required=True
    )
    padd = project.add_parser("add", help="add a project")
    padd.add_argument("slug")
    padd.add_argument("--name")
    padd.add_argument("--description", default="")
    padd.add_argument("--style-prompt", default="")
    padd.set_defaults(func=cmd_project_add)

    pset = project.add_parser(
        "set", help="evaluation prompts and seeds, gate thresholds, model-card licence fields"
    )
    pset.add_argument("slug")
    pset.add_argument(
        "--eval-prompt",
        dest="eval_prompts",
        action="append",
        metavar="TEXT",
        help="an eval grid row (repeatable; replaces the list; the trigger word is added)",
    )
    pset.add_argument(
        "--eval-seed",
        dest="eval_seeds",
        action="append",
        metavar="N",
        help="an eval grid seed (repeatable; replaces the list)",
    )
    for key in THRESHOLD_SETTINGS:
        pset.add_argument(_option(key), dest=key, metavar="X", help="gate threshold")
    for key in TEXT_SETTINGS:
        pset.add_argument(_option(key), dest=key, metavar="TEXT", help="model card field")
    pset.add_argument(
        "--unset",
        action="append",
        default=[],
        metavar="KEY",
        help="back to the default (repeatable), e.g. --unset min-identity",
    )
    pset.set_defaults(func=cmd_project_set)
    pshow = project.add_parser("show", help="a project's settings")
    pshow.add_argument("slug")
    pshow.set_defaults(func=cmd_project_show)

    character = sub.add_parser("character", help="characters").add_subparsers(
        dest="action", required=True
    )
    cadd = character.add_parser("add", help="add a character to a project")
    cadd.add_argument("slug")
    cadd.add_argument("--project", required=True)
    cadd.add_argument("--name")
    cadd.add_argument("--design-prompt", default="")
    cadd.add_argument("--trigger-word")
    cadd.add_argument("--negative-prompt", default="")
    for name in CHARACTER_NUMBERS:
        cadd.add_argument(f"--{name}", metavar="N")
    cadd.add_argument("--sampler")
    cadd.set_defaults(func=cmd_character_add)

    ingest = sub.add_parser(
        "ingest", help="request an ingest of a URL, video or image, or scan ComfyUI's outputs"
    )
    ingest.add_argument(
        "source", nargs="?", help="a URL (YouTube or any yt-dlp site) or a local file"
    )
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
    rlist.set_defaults(func=cmd_review_list)
    rapprove = review.add_parser("approve", help="approve images")
    rapprove.add_argument("image_ids", type=_typed("image id", POSITIVE_WHOLE), nargs="+")
    rapprove.add_argument("--reviewer", default=_login_name())
    rapprove.set_defaults(func=cmd_review_approve)
    rreject = review.add_parser("reject", help="reject an image with feedback")
    rreject.add_argument("image_id", type=_typed("image id", POSITIVE_WHOLE))
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
    rreject.add_argument("--reviewer", default=_login_name())
    rreject.set_defaults(func=cmd_review_reject)

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
        change.add_argument("release_id", type=_typed("release id", POSITIVE_WHOLE))
        change.set_defaults(func=cmd_release_change)

    config = sub.add_parser("config", help="the effective settings and where each came from")
    config.add_argument("--check", action="store_true", help="validate paths and URLs")
    config.add_argument("--readme", metavar="PATH", help="rewrite the README's settings table")
    config.set_defaults(func=cmd_config)

    status = sub.add_parser("status", help="characters, counts, datasets and releases")
    status.add_argument("--project")
    status.set_defaults(func=cmd_status)

    demo = sub.add_parser("demo", help="build a demo project and run the whole graph on the CPU")
    demo.set_defaults(func=cmd_demo)

    ui = sub.add_parser("ui", help="start the Dagster web UI (dagster dev) on 127.0.0.1")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)
    return parser


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (CliError, RegistryError, SettingsError)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from lora_pipeline.demo import DemoFailed
    from lora_pipeline.media.download import DownloadFailed
    from lora_pipeline.media.images import InvalidImageError
    from lora_pipeline.media.store import UnsafePathError
    from lora_pipeline.media.uploads import UploadError
    from lora_pipeline.media.video import VideoError
    from lora_pipeline.review.app import ReviewAppError

    # Every PipelineError is expected: its message is one line fit for the user.
    return EXPECTED_ERRORS + (
        PipelineError,
        ReviewAppError,
        DemoFailed,
        DownloadFailed,
        InvalidImageError,
        UnsafePathError,
        UploadError,
        VideoError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except _expected_errors() as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
